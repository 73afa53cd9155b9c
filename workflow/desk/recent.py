"""The hour-long counts the desk limits by (new tickets per sender for the flood limit,
automatic emails per recipient and ticket for the automatic-mail limit), read once per
key through an import's batch instead of once per email.

Inside ``remembered_counts`` the first count of a key reads the rows of its window from
the database; the rows the block writes later are noted as they are written
(``noted_ticket``, ``noted_automatic``) and every later count of that key is taken in
memory. That is exact only while nothing else can write such rows, and while nothing
the block wrote is undone alone, so the block remembers only on SQLite, where the
transaction holds the database's write lock from its BEGIN IMMEDIATE, and the batch
uses it only when it records without savepoints (``batch._straight``: undoing one email
rolls the whole transaction back, and the block with it). Elsewhere each count is one
statement, as for a single email."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.orm import Session

from postdesk.storage.db import NEEDS_NO_BUFFERED_ROWS
from postdesk.storage.models import Outbox, OutboxStatus, Ticket
from postdesk.workflow.desk.rows import buffered_values

HOUR = timedelta(hours=1)

# Reads that add the rows an import's batch is holding back (``rows.buffered_values``) to
# those in the database themselves, so they need none of them written first.
_BLIND = {NEEDS_NO_BUFFERED_ROWS: True}
_OF_REQUESTER = (Ticket.requester_email == bindparam("requester"),
                 Ticket.created_at >= bindparam("since"))
_TICKETS_SINCE = select(func.count(Ticket.id)).where(*_OF_REQUESTER)
_TICKETS_BETWEEN = _TICKETS_SINCE.where(Ticket.created_at <= bindparam("until"))
# Counted with the tickets an import's batch holds back (``tickets_opened_between``).
_TICKETS_BETWEEN_WRITTEN = _TICKETS_BETWEEN.execution_options(**_BLIND)
_TICKET_TIMES = select(Ticket.created_at).where(*_OF_REQUESTER).execution_options(**_BLIND)
# A draft counts unless it is itself going to be suppressed.
_AUTOMATIC = (Outbox.automatic.is_(True), Outbox.created_at >= bindparam("since"),
              Outbox.status != OutboxStatus.SUPPRESSED,
              Outbox.recipient == bindparam("recipient"))
_AUTOMATIC_SENT = select(
    func.count(Outbox.id),
    func.sum(case((Outbox.ticket_id == bindparam("ticket_id"), 1), else_=0)),
).where(*_AUTOMATIC)
_AUTOMATIC_ROWS = (select(Outbox.created_at, Outbox.ticket_id).where(*_AUTOMATIC)
                   .execution_options(**_BLIND))

# session.info key: what the block remembers, by (kind, address): the start of the
# window first read, and the rows since, as (created_at, ticket id) pairs.
_HELD = "postdesk_remembered_counts"
_Rows = list[tuple[datetime, int | None]]


@contextmanager
def remembered_counts(session: Session) -> Iterator[None]:
    """Remember the counted rows per key through the block (on SQLite; see above)."""
    if session.connection().dialect.name != "sqlite":
        yield
        return
    session.info[_HELD] = {}
    try:
        yield
    finally:
        session.info.pop(_HELD, None)


def tickets_opened_since(session: Session, requester: str, since: datetime) -> int:
    """Tickets of ``requester`` opened at or after ``since`` (the one just opened
    included)."""
    rows = _rows(session, ("ticket", requester), since, lambda: [
        *((at, None) for (at,) in session.connection().execute(
            _TICKET_TIMES, {"requester": requester, "since": since})),
        *((row["created_at"], None) for row in buffered_values(session, Ticket)
          if row["requester_email"] == requester and row["created_at"] >= since)])
    if rows is None:
        return session.connection().execute(
            _TICKETS_SINCE, {"requester": requester, "since": since}).scalar() or 0
    return sum(1 for at, _ in rows if at >= since)


def tickets_opened_between(session: Session, requester: str, since: datetime,
                           until: datetime) -> int:
    """Tickets of ``requester`` opened in [since, until] (imported history: the hour
    before an email's own Date); always counted in the database (with those an import's
    batch holds back)."""
    written = session.connection().execute(_TICKETS_BETWEEN_WRITTEN, {
        "requester": requester, "since": since, "until": until}).scalar() or 0
    return written + sum(1 for row in buffered_values(session, Ticket)
                         if row["requester_email"] == requester
                         and since <= row["created_at"] <= until)


def noted_ticket(session: Session, requester: str, opened_at: datetime) -> None:
    """A ticket of ``requester`` was just written."""
    rows = _remembered(session, ("ticket", requester))
    if rows is not None:
        rows.append((opened_at, None))


def automatic_sent_since(session: Session, recipient: str, ticket_id: int | None,
                         since: datetime) -> tuple[int, int]:
    """Automatic emails to ``recipient`` (lower case) since ``since`` that are not
    suppressed: all of them, and those on ``ticket_id``."""
    rows = _rows(session, ("automatic", recipient), since, lambda: [
        *((at, row_ticket) for at, row_ticket in session.connection().execute(
            _AUTOMATIC_ROWS, {"recipient": recipient, "since": since})),
        *((row["created_at"], row["ticket_id"]) for row in buffered_values(session, Outbox)
          if row["automatic"] and row["created_at"] >= since
          and row["status"] != OutboxStatus.SUPPRESSED and row["recipient"] == recipient)])
    if rows is None:
        to_recipient, on_ticket = session.connection().execute(_AUTOMATIC_SENT, {
            "recipient": recipient, "since": since, "ticket_id": ticket_id}).one()
        return to_recipient or 0, on_ticket or 0
    recent = [row_ticket for at, row_ticket in rows if at >= since]
    return len(recent), sum(1 for t in recent if ticket_id is not None and t == ticket_id)


def noted_automatic(session: Session, recipient: str, ticket_id: int | None,
                    created_at: datetime) -> None:
    """An automatic email to ``recipient`` (lower case), not suppressed, was just
    written."""
    rows = _remembered(session, ("automatic", recipient))
    if rows is not None:
        rows.append((created_at, ticket_id))


def _rows(session: Session, key: tuple[str, str], since: datetime,
          read: Callable[[], _Rows]) -> _Rows | None:
    """The remembered rows of ``key`` since ``since``, read now if this is the first
    count; None when not remembering, or when ``since`` is earlier than the window first
    read (imported history counts each email's own hour): count in the database."""
    held = session.info.get(_HELD)
    if held is None:
        return None
    if key not in held:
        held[key] = (since, read())
    first_since, rows = held[key]
    return rows if since >= first_since else None


def _remembered(session: Session, key: tuple[str, str]) -> _Rows | None:
    held = session.info.get(_HELD)
    return None if held is None or key not in held else held[key][1]
