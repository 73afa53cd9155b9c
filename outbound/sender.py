"""The send step: hand one stored outbox email to the transport, at most once.

A row is claimed with a conditional UPDATE (queued, or a claim that has expired), so two
workers handed the same id (a duplicate delivery, the sweeper racing the original) never
both send it. The smarthost's 250 to DATA is the commitment: from then on the email is
``sent`` whatever QUIT answers (the transport ignores it), and ``sent`` is recorded with
retries *inside this process* while the claim still holds (a database outage must not
release the claim, or the sweeper would send the email again once it expired). A
redelivered job then finds ``sent`` and stops. 4xx and connection errors before the 250
are retried by Dramatiq with backoff; 5xx marks the row ``failed``.

Each row carries one Message-ID, fixed when it was rendered (``row.raw`` is sent as
stored), so a receiving system can deduplicate even the copy the remaining window can
produce: a process killed between the smarthost's 250 and the commit of ``sent`` leaves
the row claimed; once the claim (``desk.send_claim``) expires the email is sent again
(docs/reference.md, "Delivery guarantees").

Only rendered rows are ever ``queued`` (``workflow.desk.outbox.render_drafts``): a
``draft`` is never claimed here, so nothing half-decided can go out."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.exc import DBAPIError

from postdesk.outbound.transport import PermanentFailure, TemporaryFailure, Transport
from postdesk.storage.models import Outbox, OutboxStatus
from postdesk.workflow.desk.services import Services

log = logging.getLogger("postdesk.outbound")
FINAL = (OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.BOUNCED, OutboxStatus.SUPPRESSED)


def send_outbox(services: Services, transport: Transport, outbox_id: int) -> str:
    """Returns what happened: sent | already-<status> | claimed-elsewhere | failed | missing."""
    now = services.now()
    claimed_at = time.monotonic()
    claim_seconds = services.config.desk.send_claim.as_timedelta().total_seconds()
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
    _record_sent(services, outbox_id, error, deadline=claimed_at + claim_seconds * 0.9)
    return "sent"


def _record_sent(services: Services, outbox_id: int, error: str | None, *,
                 deadline: float) -> None:
    """Commit ``sent``, retrying database errors until shortly before our claim runs out:
    the email is already delivered, so giving up early would hand it to the sweeper."""
    delay = 0.2
    while True:
        try:
            _finish(services, outbox_id, OutboxStatus.SENT, error=error)
            return
        except DBAPIError as exc:
            if time.monotonic() + delay >= deadline:
                log.error("outbox %s was delivered but recording 'sent' kept failing; it "
                          "may be sent again when its claim expires: %s", outbox_id, exc)
                raise
            log.warning("outbox %s delivered; database error recording it, retrying in "
                        "%.1fs: %s", outbox_id, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


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
