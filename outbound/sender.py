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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.exc import DBAPIError

from postdesk.outbound.transport import (
    Connection,
    PermanentFailure,
    TemporaryFailure,
    Transport,
)
from postdesk.storage.db import one_statement
from postdesk.storage.models import Outbox, OutboxStatus
from postdesk.workflow.desk.services import Services

log = logging.getLogger("postdesk.outbound")
FINAL = (OutboxStatus.SENT, OutboxStatus.FAILED, OutboxStatus.BOUNCED, OutboxStatus.SUPPRESSED)

_OUTBOX = cast(Table, Outbox.__table__)
# Claim and read in one statement (Core, built once): the UPDATE returns what the sends
# need and what the log lines name, so a job's sends are one round trip before the
# transport, however many emails the job carries.
_CLAIM = (update(_OUTBOX)
          .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)),
                 or_(_OUTBOX.c.status == OutboxStatus.QUEUED,
                     (_OUTBOX.c.status == OutboxStatus.SENDING)
                     & (_OUTBOX.c.claimed_until < bindparam("now"))))
          .values(status=OutboxStatus.SENDING, claimed_until=bindparam("until"),
                  attempts=_OUTBOX.c.attempts + 1)
          .returning(_OUTBOX.c.id, _OUTBOX.c.raw, _OUTBOX.c.to, _OUTBOX.c.cc,
                     _OUTBOX.c.message_id, _OUTBOX.c.template, _OUTBOX.c.recipient))
_STATUS = select(_OUTBOX.c.id, _OUTBOX.c.status, _OUTBOX.c.template,
                 _OUTBOX.c.recipient).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
# Built once, one per shape (``values()`` on each call built a statement and its cache
# key per send): a status with no claim and the error, and ``sent`` with its time.
_FINISH = (update(_OUTBOX).where(_OUTBOX.c.id == bindparam("outbox_id"))
           .values(status=bindparam("status"), claimed_until=None,
                   last_error=bindparam("error")))
_FINISH_SENT = _FINISH.values(sent_at=bindparam("sent_at"))


@dataclass(frozen=True)
class Delivery:
    """What one send did: ``outcome`` is sent | already-<status> | claimed-elsewhere |
    failed | missing | retry; ``template`` and ``recipient`` name the email (for the log
    line); ``retry`` is the temporary failure to be retried (outcome ``retry``)."""
    outcome: str
    template: str | None = None
    recipient: str | None = None
    retry: TemporaryFailure | None = None


def send_outbox(services: Services, transport: Transport, outbox_id: int) -> Delivery:
    """Send one email; a temporary failure is raised (for Dramatiq to retry the job)."""
    delivery = send_outboxes(services, transport, [outbox_id])[outbox_id]
    if delivery.retry is not None:
        raise delivery.retry
    return delivery


def send_outboxes(services: Services, transport: Transport, outbox_ids: Sequence[int]
                  ) -> dict[int, Delivery]:
    """Send each email (in the order given), at most once each: one claim for all, then
    each to the transport in turn, its ending recorded before the next. An email that fails,
    even temporarily, does not keep the others from going; the caller retries the job
    for the ones whose delivery is ``retry`` (the others are then no-ops)."""
    ids = list(dict.fromkeys(outbox_ids))
    now = services.now()
    claimed_at = time.monotonic()
    claim = services.config.desk.send_claim.as_timedelta()
    deliveries: dict[int, Delivery] = {}
    # The claim commits on its own before the transport is called (one statement, so on
    # PostgreSQL in autocommit mode: no BEGIN/COMMIT round trips).
    with one_statement(services.sessions) as connection:
        rows = {row.id: row for row in connection.execute(
            _CLAIM, {"ids": ids, "now": now, "until": now + claim})}
        if len(rows) < len(ids):
            for state in connection.execute(_STATUS, {"ids": [i for i in ids
                                                              if i not in rows]}):
                deliveries[state.id] = Delivery(
                    f"already-{state.status}" if state.status in FINAL
                    else "claimed-elsewhere", state.template, state.recipient)
    for outbox_id in ids:
        if outbox_id not in rows and outbox_id not in deliveries:
            log.error("outbox %s does not exist", outbox_id)
            deliveries[outbox_id] = Delivery("missing")
    if not rows:
        return deliveries
    # One connection for the job's emails, its QUIT after the last is recorded.
    with transport.connect() as connection:
        for outbox_id in ids:
            row = rows.get(outbox_id)
            if row is None:
                continue
            status, error, delivery = _deliver(services, connection, outbox_id, row)
            deliveries[outbox_id] = delivery
            # Recorded at once, before the next email is handed over and before QUIT:
            # between the smarthost's 250 and this commit lies the one window in which
            # an email can be sent twice (docs/faults.md), and it must not include
            # another delivery or another round trip.
            _record(services, outbox_id, status, error,
                    deadline=claimed_at + claim.total_seconds() * 0.9)
    return deliveries


def _deliver(services: Services, connection: Connection, outbox_id: int, row: Any
             ) -> tuple[OutboxStatus, str | None, Delivery]:
    """Hand one claimed email to the transport: the status to record, its error, and
    what the send did."""
    if row.raw is None:
        # Cannot happen through render_drafts (it sets the bytes and ``queued`` in one
        # UPDATE); a row written by hand must fail visibly, not send an empty email.
        log.error("outbox %s is queued without rendered bytes", outbox_id)
        return (OutboxStatus.FAILED, "queued without rendered bytes",
                Delivery("failed", row.template, row.recipient))
    recipients = list(dict.fromkeys([*row.to, *row.cc]))
    key = f"{outbox_id}-{row.message_id.strip('<>')}"
    try:
        refused = connection.deliver(key, services.envelope_sender, recipients, row.raw)
    except TemporaryFailure as exc:
        return (OutboxStatus.QUEUED, str(exc),
                Delivery("retry", row.template, row.recipient, retry=exc))
    except PermanentFailure as exc:
        log.warning("outbox %s failed permanently: %s", outbox_id, exc)
        return OutboxStatus.FAILED, str(exc), Delivery("failed", row.template, row.recipient)
    return (OutboxStatus.SENT, f"refused: {refused}" if refused else None,
            Delivery("sent", row.template, row.recipient))


def _record(services: Services, outbox_id: int, status: OutboxStatus, error: str | None, *,
            deadline: float) -> None:
    """Commit how one email's send ended, retrying database errors until shortly before
    our claim runs out: an email already delivered must be recorded ``sent``, and giving
    up early would hand it to the sweeper, which would send it again."""
    delay = 0.2
    while True:
        try:
            with one_statement(services.sessions) as connection:
                if status == OutboxStatus.SENT:
                    connection.execute(_FINISH_SENT, {"outbox_id": outbox_id, "status": status,
                                                      "error": error,
                                                      "sent_at": services.now()})
                else:
                    connection.execute(_FINISH, {"outbox_id": outbox_id, "status": status,
                                                 "error": error})
            return
        except DBAPIError as exc:
            if time.monotonic() + delay >= deadline:
                log.error("outbox %s (%s): recording it kept failing; %s: %s", outbox_id,
                          status, "it may be sent again when its claim expires"
                          if status == OutboxStatus.SENT else "the sweeper will find it", exc)
                raise
            log.warning("outbox %s (%s): database error recording it, retrying in %.1fs: %s",
                        outbox_id, status, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


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
