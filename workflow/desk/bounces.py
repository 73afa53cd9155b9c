"""What a bounce of our mail changes: the outbox row is marked, hard bounces are counted
on the contact, and the ticket's assignee (or the leads) are told."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Contact, Outbox, OutboxStatus, Staff, Ticket
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.outbox import OutboxWriter
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.refs import ticket_ref


def record_bounce(session: Session, config: Config, outbox: OutboxWriter, *,
                  addresses: list[str], permanent: bool | None,
                  original_message_id: str | None, reason: str, now: datetime
                  ) -> Ticket | None:
    """Returns the ticket the bounced email belonged to, if any. A bounce never creates
    a ticket."""
    row = None
    if original_message_id:
        row = session.scalar(select(Outbox).where(Outbox.message_id == original_message_id))
    if row is None and addresses:
        since = now - timedelta(days=7)
        row = session.scalar(select(Outbox).where(
            Outbox.recipient.in_([a.lower() for a in addresses]), Outbox.created_at >= since)
            .order_by(Outbox.id.desc()).limit(1))
    if row is None:
        return None
    failing = next((a for a in addresses if a.lower() in [t.lower() for t in row.to]),
                   addresses[0] if addresses else row.recipient)
    row.status, row.bounced_address = OutboxStatus.BOUNCED, failing
    ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
    if permanent is not False:
        contact = session.scalar(select(Contact).where(Contact.email == failing.lower()))
        if contact is not None:
            contact.hard_bounces += 1
            if contact.hard_bounces >= config.desk.hard_bounce_limit and not contact.flagged_at:
                contact.flagged_at = now
    if ticket is None:
        return None
    add_event(session, ticket, "email_bounced", now, "system", outbox_id=row.id,
              address=failing, reason=reason, permanent=permanent)
    assignee = session.get(Staff, ticket.assignee_id) if ticket.assignee_id else None
    people = [assignee.email] if assignee else [s.email for s in config.leads()]
    ref = ticket_ref(config.desk.ticket_prefix, ticket.id)
    for email in people:
        outbox.queue(
            dedupe_key=f"bounce-notice:{row.id}:{email}", template="bounce_notice", to=[email],
            on_ticket=False, ticket=ticket, subject=f"[{ref}] Email to {failing} bounced",
            context={"ref": ref, "address": failing, "reason": reason,
                     "permanent": permanent, "subject": row.subject})
    return ticket
