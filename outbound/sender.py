"""The send step: hand one stored outbox email to the transport, at most once.

A row is claimed with a conditional UPDATE (queued, or a claim that has expired), so two
workers handed the same id (a duplicate delivery, the sweeper racing the original) never
both send it. ``sent`` is committed straight after the smarthost's 250; a redelivered
job then finds ``sent`` and stops. 4xx and connection errors are retried by Dramatiq
with backoff; 5xx marks the row ``failed``.

Only rendered rows are ever ``queued`` (``workflow.desk.outbox.render_drafts``): a
``draft`` is never claimed here, so nothing half-decided can go out."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update

from postdesk.outbound.transport import PermanentFailure, TemporaryFailure, Transport
from postdesk.storage.models import Outbox, OutboxStatus
from postdesk.workflow.desk.services import Services

log = logging.getLogger("postdesk.outbound")
FINAL = (OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.BOUNCED, OutboxStatus.SUPPRESSED)


def send_outbox(services: Services, transport: Transport, outbox_id: int) -> str:
    """Returns what happened: sent | already-<status> | claimed-elsewhere | failed | missing."""
    now = services.now()
    with services.sessions() as session, session.begin():
        # Session.execute is typed as returning a plain Result, but an UPDATE returns a
        # CursorResult, which has the rowcount.
        claimed = cast(CursorResult[Any], session.execute(
            update(Outbox)
            .where(Outbox.id == outbox_id,
                   or_(Outbox.status == OutboxStatus.QUEUED,
                       (Outbox.status == OutboxStatus.SENDING) & (Outbox.claimed_until < now)))
            .values(status=OutboxStatus.SENDING,
                    claimed_until=now + services.config.desk.send_claim.as_timedelta(),
                    attempts=Outbox.attempts + 1)
        )).rowcount
        row = session.get(Outbox, outbox_id)
        if row is None:
            log.error("outbox %s does not exist", outbox_id)
            return "missing"
        if not claimed:
            return f"already-{row.status}" if row.status in FINAL else "claimed-elsewhere"
        recipients = list(dict.fromkeys([*row.to, *row.cc]))
        raw, key = row.raw, f"{row.id}-{row.message_id.strip('<>')}"
    if raw is None:
        # Cannot happen through render_drafts (it sets the bytes and ``queued`` in one
        # UPDATE); a row written by hand must fail visibly, not send an empty email.
        log.error("outbox %s is queued without rendered bytes", outbox_id)
        _finish(services, outbox_id, OutboxStatus.FAILED, error="queued without rendered bytes")
        return "failed"
    try:
        refused = transport.deliver(key, services.envelope_sender, recipients, raw)
    except TemporaryFailure as exc:
        _finish(services, outbox_id, OutboxStatus.QUEUED, error=str(exc))
        raise  # Dramatiq retries with exponential backoff
    except PermanentFailure as exc:
        log.warning("outbox %s failed permanently: %s", outbox_id, exc)
        _finish(services, outbox_id, OutboxStatus.FAILED, error=str(exc))
        return "failed"
    error = f"refused: {refused}" if refused else None
    _finish(services, outbox_id, OutboxStatus.SENT, error=error)
    return "sent"


def _finish(services: Services, outbox_id: int, status: OutboxStatus, *,
            error: str | None) -> None:
    with services.sessions() as session, session.begin():
        values: dict[str, object] = {"status": status, "claimed_until": None,
                                     "last_error": error}
        if status == OutboxStatus.SENT:
            values["sent_at"] = services.now()
        session.execute(update(Outbox).where(Outbox.id == outbox_id).values(**values))


def stale_outbox_ids(services: Services, older_than: timedelta, limit: int = 500) -> list[int]:
    """Queued emails whose send job was lost (broker down, process killed)."""
    now = services.now()
    cutoff = now - older_than
    with services.sessions() as session:
        return list(session.scalars(
            select(Outbox.id).where(
                or_(Outbox.status == OutboxStatus.QUEUED,
                    (Outbox.status == OutboxStatus.SENDING) & (Outbox.claimed_until < now)),
                Outbox.created_at < cutoff).order_by(Outbox.id).limit(limit)))
