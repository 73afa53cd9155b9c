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
from postdesk.workflow.desk.events import participants, subject_token_re


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
        if ticket_id is not None:
            return TicketMatch(session.get(Ticket, ticket_id), "known_message_id")
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
