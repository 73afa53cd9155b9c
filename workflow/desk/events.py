"""A ticket's history: its events."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from postdesk.storage.models import Event, Ticket

_INSERT_EVENT = insert(Event)
# session.info keys: the events of a ``deferred_events`` block not yet written, and where
# the events of each block open inside it start among them.
_DEFERRED = "postdesk_deferred_events"
_STARTS = "postdesk_deferred_event_starts"


def add_event(session: Session, ticket: Ticket | None, kind: str, at: datetime,
              actor: str = "system", **data: Any) -> None:
    """Write one event in the session's transaction: now, as a plain INSERT on the
    session's connection (events are only ever written and listed, never changed, so
    they need no place in the session's unit of work), or, inside ``deferred_events``,
    with the block's other events at its end. ``ticket``, when given, is already in the
    database (it has its number)."""
    row = {"ticket_id": ticket.id if ticket else None, "at": at, "kind": kind,
           "actor": actor, "data": data}
    deferred = session.info.get(_DEFERRED)
    if deferred is not None:
        deferred.append(row)
    else:
        session.connection().execute(_INSERT_EVENT, row)


@contextmanager
def deferred_events(session: Session) -> Iterator[None]:
    """The events added in the block are written together, in order, in one statement
    when it ends (the pipeline's record phase adds several per email). Whoever reads
    events inside such a block calls ``write_deferred_events`` first; a block that ends
    by an exception writes nothing (its transaction is being rolled back). A block inside
    another leaves its events to the outer one (an import's batch writes the events of
    all its emails at once)."""
    deferred = session.info.get(_DEFERRED)
    if deferred is not None:
        starts = session.info[_STARTS]
        starts.append(len(deferred))
        try:
            yield
        finally:
            starts.pop()
        return
    session.info[_DEFERRED], session.info[_STARTS] = [], [0]
    try:
        yield
        write_deferred_events(session)
    finally:
        session.info.pop(_DEFERRED, None)
        session.info.pop(_STARTS, None)


def discard_deferred_events(session: Session) -> None:
    """Forget the innermost block's events not yet written (its work is being undone)."""
    deferred = session.info.get(_DEFERRED)
    if deferred is not None:
        del deferred[session.info[_STARTS][-1]:]


def write_deferred_events(session: Session) -> None:
    deferred = session.info.get(_DEFERRED)
    if deferred:
        session.connection().execute(_INSERT_EVENT, deferred)
        deferred.clear()
        starts = session.info[_STARTS]
        starts[:] = [0] * len(starts)
