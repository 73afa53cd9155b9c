"""Which ticket an inbound email belongs to.

In order of trust:
1. our own Message-IDs in In-Reply-To/References (signed: they name the ticket and
   cannot be forged), newest first;
2. the plus-address reply token the email was sent to (signed as well);
3. Message-IDs of earlier emails already on a ticket (the client's own thread);
4. the ``[PD-n]`` subject token, only when the sender is already on that ticket or
   belongs to its org (a guessable number must not let a stranger into a ticket).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.mail.tokens import ticket_from_message_id, ticket_from_reply_address
from postdesk.storage.models import Message, Ticket
from postdesk.workflow.desk.events import participants
from postdesk.workflow.rules.refs import subject_token_re


@dataclass(frozen=True)
class TicketMatch:
    ticket: Ticket
    how: str   # our_message_id | reply_address | known_message_id | subject_token


def find_ticket(session: Session, *, secret: bytes, prefix: str, in_reply_to: str | None,
                references: Sequence[str], recipients: Sequence[str], subject: str,
                sender: str, sender_org_id: int | None,
                sender_is_staff: bool = False) -> TicketMatch | None:
    thread_ids = list(dict.fromkeys(
        [i for i in [in_reply_to, *reversed(list(references))] if i]))
    for mid in thread_ids:
        tid = ticket_from_message_id(secret, mid)
        if tid:
            ticket = session.get(Ticket, tid)
            if ticket is not None:
                return TicketMatch(ticket, "our_message_id")
    for rcpt in recipients:
        tid = ticket_from_reply_address(secret, rcpt)
        if tid:
            ticket = session.get(Ticket, tid)
            if ticket is not None:
                return TicketMatch(ticket, "reply_address")
    if thread_ids:
        ticket_id = session.scalar(
            select(Message.ticket_id).where(Message.message_id.in_(thread_ids))
            .order_by(Message.id.desc()).limit(1))
        ticket = session.get(Ticket, ticket_id) if ticket_id is not None else None
        if ticket is not None:
            return TicketMatch(ticket, "known_message_id")
    match = subject_token_re(prefix).search(subject or "")
    if match:
        ticket = session.get(Ticket, int(match.group(1)))
        if ticket is not None and (
            sender_is_staff
            or (sender_org_id is not None and ticket.org_id == sender_org_id)
            or sender.lower() in participants(session, ticket)
        ):
            return TicketMatch(ticket, "subject_token")
    return None


def client_thread(session: Session, ticket: Ticket) -> tuple[str | None, list[str]]:
    """In-Reply-To and References that put our reply in the client's own thread: the
    client's latest email, and the ids of the conversation so far."""
    rows = session.execute(
        select(Message.message_id, Message.direction, Message.kind, Message.author_staff_id)
        .where(Message.ticket_id == ticket.id, Message.message_id.is_not(None),
               Message.kind != "internal")
        .order_by(Message.id)).all()
    # The client's own emails, and what the client saw from us; never the staff member's
    # email to postdesk, which the client never received.
    client_ids = [r.message_id for r in rows if r.direction == "in" and r.author_staff_id is None]
    public_ids = [r.message_id for r in rows if (r.direction == "in" and r.author_staff_id is None)
                  or (r.direction == "out" and r.kind in ("public", "system"))]
    return (client_ids[-1] if client_ids else None), public_ids
