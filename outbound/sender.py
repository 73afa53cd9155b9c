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
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.exc import DBAPIError

from postdesk.outbound.transport import PermanentFailure, TemporaryFailure, Transport
from postdesk.storage.db import one_statement
from postdesk.storage.models import Outbox, OutboxStatus
from postdesk.workflow.desk.services import Services

log = logging.getLogger("postdesk.outbound")
FINAL = (OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.BOUNCED, OutboxStatus.SUPPRESSED)

_OUTBOX = cast(Table, Outbox.__table__)
# Claim and read in one statement (Core, built once): the UPDATE returns what the send
# needs and what the log line names, so a send is one round trip before the transport.
_CLAIM = (update(_OUTBOX)
          .where(_OUTBOX.c.id == bindparam("outbox_id"),
                 or_(_OUTBOX.c.status == OutboxStatus.QUEUED,
                     (_OUTBOX.c.status == OutboxStatus.SENDING)
                     & (_OUTBOX.c.claimed_until < bindparam("now"))))
          .values(status=OutboxStatus.SENDING, claimed_until=bindparam("until"),
                  attempts=_OUTBOX.c.attempts + 1)
          .returning(_OUTBOX.c.raw, _OUTBOX.c.to, _OUTBOX.c.cc, _OUTBOX.c.message_id,
                     _OUTBOX.c.template, _OUTBOX.c.recipient))
_STATUS = select(_OUTBOX.c.status, _OUTBOX.c.template, _OUTBOX.c.recipient).where(
    _OUTBOX.c.id == bindparam("outbox_id"))
# Built once, one per shape (``values()`` on each call built a statement and its cache
# key per send): a status with no claim and the error, and ``sent`` with its time.
_FINISH = (update(_OUTBOX).where(_OUTBOX.c.id == bindparam("outbox_id"))
           .values(status=bindparam("status"), claimed_until=None,
                   last_error=bindparam("error")))
_FINISH_SENT = _FINISH.values(sent_at=bindparam("sent_at"))


@dataclass(frozen=True)
class Delivery:
    """What one send job did: ``outcome`` is sent | already-<status> | claimed-elsewhere |
    failed | missing; ``template`` and ``recipient`` name the email (for the log line)."""
    outcome: str
    template: str | None = None
    recipient: str | None = None


def send_outbox(services: Services, transport: Transport, outbox_id: int) -> Delivery:
    now = services.now()
    claimed_at = time.monotonic()
    claim = services.config.desk.send_claim.as_timedelta()
    # The claim commits on its own before the transport is called (one statement, so on
    # PostgreSQL in autocommit mode: no BEGIN/COMMIT round trips).
    with one_statement(services.sessions) as connection:
        row = connection.execute(_CLAIM, {"outbox_id": outbox_id, "now": now,
                                          "until": now + claim}).first()
        if row is None:
            state = connection.execute(_STATUS, {"outbox_id": outbox_id}).first()
            if state is None:
                log.error("outbox %s does not exist", outbox_id)
                return Delivery("missing")
            return Delivery(f"already-{state.status}" if state.status in FINAL
                            else "claimed-elsewhere", state.template, state.recipient)
    delivery = Delivery("sent", row.template, row.recipient)
    recipients = list(dict.fromkeys([*row.to, *row.cc]))
    key = f"{outbox_id}-{row.message_id.strip('<>')}"
    if row.raw is None:
        # Cannot happen through render_drafts (it sets the bytes and ``queued`` in one
        # UPDATE); a row written by hand must fail visibly, not send an empty email.
        log.error("outbox %s is queued without rendered bytes", outbox_id)
        _finish(services, outbox_id, OutboxStatus.FAILED, error="queued without rendered bytes")
        return Delivery("failed", row.template, row.recipient)
    try:
        refused = transport.deliver(key, services.envelope_sender, recipients, row.raw)
    except TemporaryFailure as exc:
        _finish(services, outbox_id, OutboxStatus.QUEUED, error=str(exc))
        raise  # Dramatiq retries with exponential backoff
    except PermanentFailure as exc:
        log.warning("outbox %s failed permanently: %s", outbox_id, exc)
        _finish(services, outbox_id, OutboxStatus.FAILED, error=str(exc))
        return Delivery("failed", row.template, row.recipient)
    error = f"refused: {refused}" if refused else None
    _record_sent(services, outbox_id, error,
                 deadline=claimed_at + claim.total_seconds() * 0.9)
    return delivery


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
    with one_statement(services.sessions) as connection:
        if status == OutboxStatus.SENT:
            connection.execute(_FINISH_SENT, {"outbox_id": outbox_id, "status": status,
                                              "error": error, "sent_at": services.now()})
        else:
            connection.execute(_FINISH, {"outbox_id": outbox_id, "status": status,
                                         "error": error})


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
