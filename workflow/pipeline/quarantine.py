"""Operator actions on quarantined mail. Nothing is deleted: release sends the message
back through the pipeline as authorised; drop marks it ``dropped`` and records who/why."""

from __future__ import annotations

from postdesk.storage.models import RawMessage, RawStatus
from postdesk.storage.raw_store import missing_file
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.pipeline.process import process_inbound
from postdesk.workflow.rules.errors import UserError


class QuarantineActionError(UserError, ValueError):
    pass


def release(services: Services, dispatch: Dispatch, raw_id: int, *, org: str | None = None
            ) -> str:
    """Process a quarantined message now, as authorised (into ``org`` for an unknown
    sender), and hand the email it wrote to ``dispatch``; returns what happened."""
    if org is not None and services.config.org(org) is None:
        raise QuarantineActionError(f"--org: unknown org {org!r}")
    with services.sessions() as session, session.begin():
        raw = session.get(RawMessage, raw_id)
        if raw is None or raw.status != RawStatus.QUARANTINED:
            raise QuarantineActionError(f"message {raw_id} is not in quarantine")
        missing = missing_file(session, services.blobs, raw)
        if missing is not None:
            raise QuarantineActionError(
                f"message {raw_id} cannot be released: its raw bytes are missing from the "
                f"blob store (expected at {missing}); restore that file, or drop the message")
        previous = raw.reason
        raw.status, raw.authorised = RawStatus.PENDING, True
        raw.reason, raw.detail = None, f"released from {previous}" + (
            f" into org {org}" if org else "")
        raw.release_org = org
        add_event(session, None, "quarantine_released", services.now(), "operator",
                  raw_id=raw_id, reason=previous, org=org)
    # Processed here, not by a worker, so the operator sees the outcome; it is committed
    # (pending) first, so a crash in between leaves it to the sweeper like any new mail.
    result = process_inbound(services, raw_id)
    if result is None:
        return f"released message {raw_id}"
    for outbox_id in result.outbox_ids:
        dispatch.outbox(outbox_id)
    return f"released message {raw_id}: {result.status}" + (
        f" ({result.reason})" if result.reason else "")


def drop(services: Services, raw_id: int) -> str:
    with services.sessions() as session, session.begin():
        raw = session.get(RawMessage, raw_id)
        if raw is None or raw.status != RawStatus.QUARANTINED:
            raise QuarantineActionError(f"message {raw_id} is not in quarantine")
        raw.detail = f"dropped (was {raw.reason}): {raw.detail or ''}"[:4000]
        raw.status = RawStatus.DROPPED
        add_event(session, None, "quarantine_dropped", services.now(), "operator",
                  raw_id=raw_id, reason=raw.reason)
    return f"dropped message {raw_id}"
