"""The send step: hand one stored outbox email to the transport, at most once.

A row is claimed with a conditional UPDATE (queued, or a claim that has expired), so two
workers handed the same id (a duplicate delivery, the sweeper racing the original) never
both send it. ``sent`` is committed straight after the smarthost's 250; a redelivered
job then finds ``sent`` and stops. 4xx and connection errors are retried by Dramatiq
with backoff; 5xx marks the row ``failed``."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, update

from postdesk.outbound.transport import PermanentFailure, TemporaryFailure
from postdesk.storage.models import Outbox

if TYPE_CHECKING:
    from postdesk.app import App

log = logging.getLogger("postdesk.outbound")
FINAL = ("sent", "failed", "bounced", "suppressed")


def send_outbox(app: App, outbox_id: int) -> str:
    """Returns what happened: sent | already-<status> | claimed-elsewhere | failed."""
    now = app.now()
    with app.sessions() as session, session.begin():
        claimed = session.execute(
            update(Outbox)
            .where(Outbox.id == outbox_id,
                   or_(Outbox.status == "queued",
                       (Outbox.status == "sending") & (Outbox.claimed_until < now)))
            .values(status="sending",
                    claimed_until=now + app.config.desk.send_claim.as_timedelta(),
                    attempts=Outbox.attempts + 1)
        ).rowcount
        row = session.get(Outbox, outbox_id)
        if row is None:
            log.error("outbox %s does not exist", outbox_id)
            return "missing"
        if not claimed:
            return f"already-{row.status}" if row.status in FINAL else "claimed-elsewhere"
        recipients = list(dict.fromkeys([*row.to, *row.cc]))
        raw, key = row.raw, f"{row.id}-{row.message_id.strip('<>')}"
    try:
        refused = app.transport.deliver(key, app.envelope_sender, recipients, raw)
    except TemporaryFailure as exc:
        _finish(app, outbox_id, "queued", error=str(exc))
        raise  # Dramatiq retries with exponential backoff
    except PermanentFailure as exc:
        log.warning("outbox %s failed permanently: %s", outbox_id, exc)
        _finish(app, outbox_id, "failed", error=str(exc))
        return "failed"
    error = f"refused: {refused}" if refused else None
    _finish(app, outbox_id, "sent", error=error)
    return "sent"


def _finish(app: App, outbox_id: int, status: str, *, error: str | None) -> None:
    with app.sessions() as session, session.begin():
        values: dict[str, object] = {"status": status, "claimed_until": None,
                                     "last_error": error}
        if status == "sent":
            values["sent_at"] = app.now()
        session.execute(update(Outbox).where(Outbox.id == outbox_id).values(**values))


def stale_outbox_ids(app: App, older_than: timedelta, limit: int = 500) -> list[int]:
    """Queued emails whose send job was lost (broker down, process killed)."""
    cutoff = app.now() - older_than
    with app.sessions() as session:
        return list(session.scalars(
            select(Outbox.id).where(
                or_(Outbox.status == "queued",
                    (Outbox.status == "sending") & (Outbox.claimed_until < app.now())),
                Outbox.created_at < cutoff).order_by(Outbox.id).limit(limit)))
