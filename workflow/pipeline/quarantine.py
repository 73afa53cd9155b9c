"""Operator actions on quarantined mail. Nothing is deleted: release sends the message
back through the pipeline as authorised; drop marks it ``dropped`` and records who/why."""

from __future__ import annotations

from typing import TYPE_CHECKING

from postdesk.storage.models import RawMessage
from postdesk.workflow.desk.events import add_event

if TYPE_CHECKING:
    from postdesk.app import App


class QuarantineActionError(ValueError):
    pass


def release(app: App, raw_id: int, *, org: str | None = None) -> str:
    if org is not None and app.config.org(org) is None:
        raise QuarantineActionError(f"--org: unknown org {org!r}")
    with app.sessions() as session, session.begin():
        raw = session.get(RawMessage, raw_id)
        if raw is None or raw.status != "quarantined":
            raise QuarantineActionError(f"message {raw_id} is not in quarantine")
        previous = raw.reason
        raw.status, raw.authorised = "pending", True
        raw.reason, raw.detail = None, f"released from {previous}" + (
            f" into org {org}" if org else "")
        raw.release_org = org
        add_event(session, None, "quarantine_released", app.now(), "operator",
                  raw_id=raw_id, reason=previous, org=org)
    from postdesk.workflow.pipeline.process import process_inbound

    result = process_inbound(app, raw_id)
    if result is None:
        return f"released message {raw_id}"
    return f"released message {raw_id}: {result.status}" + (
        f" ({result.reason})" if result.reason else "")


def drop(app: App, raw_id: int) -> str:
    with app.sessions() as session, session.begin():
        raw = session.get(RawMessage, raw_id)
        if raw is None or raw.status != "quarantined":
            raise QuarantineActionError(f"message {raw_id} is not in quarantine")
        raw.detail = f"dropped (was {raw.reason}): {raw.detail or ''}"[:4000]
        raw.status = "dropped"
        add_event(session, None, "quarantine_dropped", app.now(), "operator", raw_id=raw_id,
                  reason=raw.reason)
    return f"dropped message {raw_id}"
