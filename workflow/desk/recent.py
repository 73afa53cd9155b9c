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

from bisect import bisect_left, insort
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, func, null, select
from sqlalchemy.orm import Session

from postdesk.storage.db import NO_BUFFERED_ROWS_NEEDED
from postdesk.storage.models import Outbox, OutboxStatus, Ticket
from postdesk.workflow.desk.rows import buffered_values

HOUR = timedelta(hours=1)

_OF_REQUESTER = (Ticket.requester_email == bindparam("requester"),
                 Ticket.created_at >= bindparam("since"))
_TICKETS_SINCE = select(func.count(Ticket.id)).where(*_OF_REQUESTER)
_TICKETS_BETWEEN = _TICKETS_SINCE.where(Ticket.created_at <= bindparam("until"))
# A draft counts unless it is itself going to be suppressed.
_COUNTED_AUTOMATIC = (Outbox.automatic.is_(True), Outbox.created_at >= bindparam("since"),
                      Outbox.status != OutboxStatus.SUPPRESSED)
_AUTOMATIC_SENT = select(
    func.count(Outbox.id),
    func.sum(case((Outbox.ticket_id == bindparam("ticket_id"), 1), else_=0)),
).where(*_COUNTED_AUTOMATIC, Outbox.recipient == bindparam("recipient"))

# The rows of a window (``_read_windows``), by kind: the address column, what is read of
# each row (its time and ticket) and which rows count. One address's (``= :address``) or
# several addresses' at once (``IN``, each row with its address). They add the rows an
# import's batch holds back (``rows.buffered_values``) to those in the database
# themselves, so they need none of them written first; so does ``tickets_opened_between``.
_WINDOW_PARTS = {
    "ticket": (Ticket.requester_email, (Ticket.created_at, null()),
               (Ticket.created_at >= bindparam("since"),)),
    "automatic": (Outbox.recipient, (Outbox.created_at, Outbox.ticket_id), _COUNTED_AUTOMATIC),
}
_WINDOW_OF_ONE = {
    kind: select(*read).where(*counted, address == bindparam("address"))
    .execution_options(**NO_BUFFERED_ROWS_NEEDED)
    for kind, (address, read, counted) in _WINDOW_PARTS.items()}
_WINDOWS_OF_MANY = {
    kind: select(address, *read).where(*counted, address.in_(bindparam("addresses",
                                                                       expanding=True)))
    .execution_options(**NO_BUFFERED_ROWS_NEEDED)
    for kind, (address, read, counted) in _WINDOW_PARTS.items()}
_TICKETS_BETWEEN_WRITTEN = _TICKETS_BETWEEN.execution_options(**NO_BUFFERED_ROWS_NEEDED)

# session.info key: what the block remembers, by (kind, address): a ``_Window``.
_HELD = "postdesk_remembered_counts"
_Rows = list[tuple[datetime, int | None]]


class _Window:
    """The rows of one key since the start of the window first read: their times in
    order, overall and by ticket, so that a count since any later time is a binary search
    (a staff member on duty is sent hundreds of notifications an hour, all counted
    again for each one)."""

    def __init__(self, first_since: datetime, rows: _Rows):
        self.first_since = first_since
        self.times: list[datetime] = []
        self.by_ticket: dict[int | None, list[datetime]] = {}
        for at, ticket_id in rows:
            self.add(at, ticket_id)

    def add(self, at: datetime, ticket_id: int | None) -> None:
        insort(self.times, at)     # rows come in time order: an append, in effect
        insort(self.by_ticket.setdefault(ticket_id, []), at)

    def since(self, since: datetime, ticket_id: int | None = None) -> tuple[int, int]:
        """Rows at or after ``since``: all of them, and those on ``ticket_id``."""
        on_ticket = self.by_ticket.get(ticket_id, []) if ticket_id is not None else []
        return (len(self.times) - bisect_left(self.times, since),
                len(on_ticket) - bisect_left(on_ticket, since))


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


def remember_windows(session: Session, addresses: Collection[str], since: datetime) -> None:
    """Inside ``remembered_counts``: read the windows since ``since`` of these addresses
    now, as senders (their tickets) and as recipients (automatic mail to them), in one
    statement each, so that their first counts need none (an import's batch, whose
    senders its helper parsed ahead). An address not among them is read when it is first
    counted; a count since a time before ``since`` asks the database, as always."""
    held = session.info.get(_HELD)
    if held is None:
        return
    for kind in _WINDOW_PARTS:
        _read_windows(session, held, kind, [a for a in addresses if (kind, a) not in held],
                      since)


def _read_windows(session: Session, held: dict[tuple[str, str], _Window], kind: str,
                  addresses: Collection[str], since: datetime) -> None:
    """Read the windows of ``kind`` of these addresses since ``since`` into ``held``: the
    rows in the database and those the batch holds back."""
    if not addresses:
        return
    rows: dict[str, _Rows] = {address: [] for address in addresses}
    connection = session.connection()
    if len(rows) == 1:
        [one] = rows
        rows[one] += [(at, ticket_id) for at, ticket_id in connection.execute(
            _WINDOW_OF_ONE[kind], {"address": one, "since": since})]
    else:
        for address, at, ticket_id in connection.execute(
                _WINDOWS_OF_MANY[kind], {"addresses": sorted(rows), "since": since}):
            rows[address].append((at, ticket_id))
    for address, at, ticket_id in _held_rows(session, kind):
        if address in rows and at >= since:
            rows[address].append((at, ticket_id))
    for address, found in rows.items():
        held[(kind, address)] = _Window(since, found)


def _held_rows(session: Session, kind: str) -> Iterator[tuple[str, datetime, int | None]]:
    """The rows of ``kind`` an import's batch holds back, as its windows count them:
    (address, time, ticket)."""
    if kind == "ticket":
        for row in buffered_values(session, Ticket):
            yield row["requester_email"], row["created_at"], None
        return
    for row in buffered_values(session, Outbox):
        if row["automatic"] and row["status"] != OutboxStatus.SUPPRESSED:
            yield row["recipient"], row["created_at"], row["ticket_id"]


def tickets_opened_since(session: Session, requester: str, since: datetime) -> int:
    """Tickets of ``requester`` opened at or after ``since`` (the one just opened
    included)."""
    rows = _rows(session, "ticket", requester, since)
    if rows is None:
        return session.connection().execute(
            _TICKETS_SINCE, {"requester": requester, "since": since}).scalar() or 0
    return rows.since(since)[0]


def tickets_opened_between(session: Session, requester: str, since: datetime,
                           until: datetime) -> int:
    """Tickets of ``requester`` opened in [since, until] (imported history: the hour
    before an email's own Date); always counted in the database (with those an import's
    batch holds back)."""
    written = session.connection().execute(_TICKETS_BETWEEN_WRITTEN, {
        "requester": requester, "since": since, "until": until}).scalar() or 0
    return written + sum(1 for address, at, _ in _held_rows(session, "ticket")
                         if address == requester and since <= at <= until)


def noted_ticket(session: Session, requester: str, opened_at: datetime) -> None:
    """A ticket of ``requester`` was just written."""
    rows = _remembered(session, ("ticket", requester))
    if rows is not None:
        rows.add(opened_at, None)


def automatic_sent_since(session: Session, recipient: str, ticket_id: int | None,
                         since: datetime) -> tuple[int, int]:
    """Automatic emails to ``recipient`` (lower case) since ``since`` that are not
    suppressed: all of them, and those on ``ticket_id``."""
    rows = _rows(session, "automatic", recipient, since)
    if rows is None:
        to_recipient, on_ticket = session.connection().execute(_AUTOMATIC_SENT, {
            "recipient": recipient, "since": since, "ticket_id": ticket_id}).one()
        return to_recipient or 0, on_ticket or 0
    return rows.since(since, ticket_id)


def noted_automatic(session: Session, recipient: str, ticket_id: int | None,
                    created_at: datetime) -> None:
    """An automatic email to ``recipient`` (lower case), not suppressed, was just
    written."""
    rows = _remembered(session, ("automatic", recipient))
    if rows is not None:
        rows.add(created_at, ticket_id)


def _rows(session: Session, kind: str, address: str, since: datetime) -> _Window | None:
    """The remembered window of ``address``, read now if this is its first count; None
    when not remembering, or when ``since`` is earlier than the window first read
    (imported history counts each email's own hour): count in the database."""
    held = session.info.get(_HELD)
    if held is None:
        return None
    if (kind, address) not in held:
        _read_windows(session, held, kind, [address], since)
    window = held[(kind, address)]
    return window if since >= window.first_since else None


def _remembered(session: Session, key: tuple[str, str]) -> _Window | None:
    held = session.info.get(_HELD)
    return None if held is None else held.get(key)
