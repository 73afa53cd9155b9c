"""Pipeline steps that keep the desk safe from the mail it receives: automatic mail
(auto-replies, bounces, loops), unauthenticated senders, floods, and the polite notice
to unknown senders (at most once per address per day, never to automatic mail)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from postdesk.mail.authentication import authenticate
from postdesk.mail.classify import classify
from postdesk.mail.tokens import is_our_message_id
from postdesk.storage.directory import contact_for
from postdesk.storage.models import Contact, Outbox, Staff, Ticket
from postdesk.workflow.desk.events import add_event, ticket_ref
from postdesk.workflow.desk.outbox import queue_email
from postdesk.workflow.pipeline.runner import Quarantine, step

if TYPE_CHECKING:
    from postdesk.workflow.pipeline.process import Inbound


@step
def classify_mail(ctx: Inbound) -> None:
    mail = ctx.email
    if mail.message_id and is_our_message_id(ctx.app.secret, mail.message_id):
        raise Quarantine("loop", f"our own email {mail.message_id} came back")
    verdict = classify(mail, ctx.raw.envelope_from)
    if verdict.kind == "bounce":
        handle_bounce(ctx, verdict.bounced_addresses, verdict.permanent,
                      verdict.original_message_id, verdict.reason)
        raise Quarantine("bounce", f"{verdict.reason}: {', '.join(verdict.bounced_addresses)}")
    if verdict.kind == "auto_reply":
        ctx.auto_reply = True
        ctx.auto_reason = verdict.reason


def handle_bounce(ctx: Inbound, addresses: list[str], permanent: bool | None,
                  original_message_id: str | None, reason: str) -> None:
    """Mark the outbox email that bounced, count hard bounces on the contact, and tell
    the ticket's assignee. A bounce never creates a ticket."""
    session = ctx.session
    row = None
    if original_message_id:
        row = session.scalar(select(Outbox).where(Outbox.message_id == original_message_id))
    if row is None and addresses:
        since = ctx.now - timedelta(days=7)
        row = session.scalar(select(Outbox).where(
            Outbox.recipient.in_([a.lower() for a in addresses]), Outbox.created_at >= since)
            .order_by(Outbox.id.desc()).limit(1))
    if row is None:
        return
    failing = next((a for a in addresses if a.lower() in [t.lower() for t in row.to]),
                   addresses[0] if addresses else row.recipient)
    row.status, row.bounced_address = "bounced", failing
    ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
    if permanent is not False:
        contact = session.scalar(select(Contact).where(Contact.email == failing.lower()))
        if contact is not None:
            contact.hard_bounces += 1
            if contact.hard_bounces >= ctx.config.desk.hard_bounce_limit and not contact.flagged_at:
                contact.flagged_at = ctx.now
    if ticket is None:
        return
    ctx.raw.ticket_id = ticket.id
    add_event(session, ticket, "email_bounced", ctx.now, "system", outbox_id=row.id,
              address=failing, reason=reason, permanent=permanent)
    assignee = session.get(Staff, ticket.assignee_id) if ticket.assignee_id else None
    people = [assignee.email] if assignee else [s.email for s in ctx.config.leads()]
    ref = ticket_ref(ctx.config.desk.ticket_prefix, ticket.id)
    for email in people:
        notice = queue_email(
            session, ctx.app, dedupe_key=f"bounce-notice:{row.id}:{email}",
            template="bounce_notice", to=[email], on_ticket=False, ticket=ticket,
            subject=f"[{ref}] Email to {failing} bounced",
            context={"ref": ref, "address": failing, "reason": reason,
                     "permanent": permanent, "subject": row.subject}, now=ctx.now)
        if notice is not None:
            ctx.outbox_ids.append(notice.id)


@step
def verify_sender(ctx: Inbound) -> None:
    """Orgs with ``require_dkim`` (and staff, with ``staff_require_dkim``) must prove their
    From domain; a released message was vouched for by an operator."""
    sender = ctx.sender
    assert sender is not None
    if ctx.raw.authorised:
        return
    required = False
    if sender.kind == "contact" and sender.org_slug:
        org = ctx.config.org(sender.org_slug)
        required = bool(org and org.require_dkim)
    elif sender.kind == "staff":
        required = ctx.config.desk.staff_require_dkim
    if not required:
        return
    verdict = authenticate(ctx.raw_bytes, ctx.email.from_addr,
                           ctx.email.header_all("Authentication-Results"),
                           ctx.config.desk.trusted_authserv_ids, ctx.app.dkim_dns)
    ctx.sender_verified = verdict.passed
    if not verdict.passed and sender.kind == "contact":
        raise Quarantine("unauthenticated", verdict.how)


def notice_unknown_sender(ctx: Inbound) -> None:
    """A polite notice, at most once per address per day, and never to automatic mail
    (no backscatter to forged senders of bulk mail)."""
    address = (ctx.email.from_addr or "").lower()
    if ctx.auto_reply or not address or not ctx.raw.notify:
        return
    day = ctx.now.date().isoformat()
    row = queue_email(ctx.session, ctx.app, dedupe_key=f"unknown-sender:{address}:{day}",
                      template="unknown_sender", to=[address],
                      subject=f"Re: {ctx.email.subject or 'your email'}",
                      in_reply_to=ctx.email.message_id, context={}, now=ctx.now)
    if row is not None:
        ctx.outbox_ids.append(row.id)


def check_flood(ctx: Inbound, requester: str) -> None:
    """More than ``flood_tickets_per_hour`` new tickets from one sender: quarantine.
    The sender's contact row is locked first so concurrent workers count in turn."""
    assert ctx.org is not None
    contact = contact_for(ctx.session, requester, ctx.org)
    ctx.session.execute(select(Contact.id).where(Contact.id == contact.id).with_for_update())
    since = ctx.now - timedelta(hours=1)
    recent = ctx.session.scalar(select(func.count(Ticket.id)).where(
        Ticket.requester_email == requester, Ticket.created_at >= since)) or 0
    if recent >= ctx.config.desk.flood_tickets_per_hour:
        raise Quarantine("flood", f"{requester} opened {recent} tickets in the last hour")
