"""What an inbound email's references point at. This module only gathers: which tickets
the references name and how; the trust decision (``workflow.rules.trust``) decides which
of them the sender may use.

References, most trusted first:
* staff tokens: a signed staff-purpose Message-ID of ours in In-Reply-To/References (a
  notification only staff received), or the signed plus-address the email was sent to
  (the Reply-To of staff notifications);
* client references: a signed client-purpose Message-ID of ours (an acknowledgement, a
  relayed reply), the Message-ID of an earlier email already on a ticket, and the
  ``[PD-n]`` subject token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.mail.tokens import read_message_id, ticket_from_reply_address
from postdesk.storage.models import Message, Org, Ticket
from postdesk.workflow.rules.refs import subject_token_re
from postdesk.workflow.rules.trust import RefHow, TicketRef


@dataclass(frozen=True)
class References:
    staff_token_ticket: int | None
    staff_token_how: str | None            # "our_message_id" | "reply_address"
    client_refs: tuple[TicketRef, ...]


def gather_references(session: Session, *, secret: bytes, prefix: str,
                      in_reply_to: str | None, references: Sequence[str],
                      recipients: Sequence[str], subject: str) -> References:
    thread_ids = list(dict.fromkeys(
        [i for i in [in_reply_to, *reversed(list(references))] if i]))
    staff_ticket: int | None = None
    staff_how: str | None = None
    client: list[TicketRef] = []
    seen: set[int] = set()

    def add(ticket_id: int | None, how: RefHow) -> None:
        if not ticket_id or ticket_id in seen:
            return
        ticket = session.get(Ticket, ticket_id)
        if ticket is None:
            return
        seen.add(ticket_id)
        org = session.get(Org, ticket.org_id)
        client.append(TicketRef(
            ticket_id=ticket.id, org_slug=org.slug if org else "",
            # Listed participants only: the requester and cc added by staff, never
            # "whoever wrote in" (which is how one org's client would get into another's).
            participants=frozenset({ticket.requester_email.lower(),
                                    *(c.lower() for c in ticket.cc or [])}),
            how=how))

    for mid in thread_ids:
        token = read_message_id(secret, mid)
        if token is None or not token.ticket_id:
            continue
        if token.purpose == "staff":
            if staff_ticket is None and session.get(Ticket, token.ticket_id) is not None:
                staff_ticket, staff_how = token.ticket_id, "our_message_id"
        else:
            add(token.ticket_id, "our_message_id")
    for rcpt in recipients:
        tid = ticket_from_reply_address(secret, rcpt)
        if tid and staff_ticket is None and session.get(Ticket, tid) is not None:
            staff_ticket, staff_how = tid, "reply_address"
    if thread_ids:
        for ticket_id in session.scalars(
                select(Message.ticket_id).where(Message.message_id.in_(thread_ids))
                .order_by(Message.id.desc()).limit(20)):
            add(ticket_id, "client_message_id")
    match = subject_token_re(prefix).search(subject or "")
    if match:
        add(int(match.group(1)), "subject")
    return References(staff_ticket, staff_how, tuple(client))


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
