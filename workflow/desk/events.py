"""A ticket's history: its events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from postdesk.storage.models import Event, Ticket

_INSERT_EVENT = insert(Event)


def add_event(session: Session, ticket: Ticket | None, kind: str, at: datetime,
              actor: str = "system", **data: Any) -> None:
    """Write one event, now, in the session's transaction. A plain INSERT on the
    session's connection: events are only ever written and listed, never changed, so
    they need no place in the session's unit of work (which would flush each one as an
    object of its own). ``ticket``, when given, is already in the database (it has its
    number)."""
    session.connection().execute(_INSERT_EVENT, {
        "ticket_id": ticket.id if ticket else None, "at": at, "kind": kind,
        "actor": actor, "data": data})
