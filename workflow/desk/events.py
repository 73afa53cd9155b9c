"""Small ticket helpers shared by the steps: refs, events, participants."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Event, Message, Ticket


def ticket_ref(prefix: str, ticket_id: int) -> str:
    return f"{prefix}-{ticket_id}"


def subject_token_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[{re.escape(prefix)}-(\d+)\]", re.IGNORECASE)


def parse_ref(prefix: str, ref: str) -> int | None:
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)", ref.strip(), re.IGNORECASE)
    return int(match.group(1)) if match else None


_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|vs|antw|tr|ref)\s*(\[\d+\])?\s*:\s*)+",
                           re.IGNORECASE)


def clean_subject(subject: str, prefix: str) -> str:
    """The subject a ticket keeps: without reply prefixes or our own token."""
    subject = subject_token_re(prefix).sub("", subject or "")
    subject = _REPLY_PREFIX.sub("", subject.strip())
    return " ".join(subject.split()) or "(no subject)"


def ack_subject(prefix: str, ticket: Ticket) -> str:
    return f"[{ticket_ref(prefix, ticket.id)}] {ticket.subject}"


def add_event(session: Session, ticket: Ticket | None, kind: str, at: datetime,
              actor: str = "system", **data: Any) -> Event:
    event = Event(ticket_id=ticket.id if ticket else None, at=at, kind=kind, actor=actor,
                  data=data)
    session.add(event)
    return event


def participants(session: Session, ticket: Ticket) -> set[str]:
    """Addresses already on a ticket: requester, cc, and everyone who wrote in."""
    people = {ticket.requester_email.lower(), *(c.lower() for c in ticket.cc or [])}
    people.update(a.lower() for a in session.scalars(
        select(Message.from_addr).where(Message.ticket_id == ticket.id,
                                        Message.direction == "in")) if a)
    return people
