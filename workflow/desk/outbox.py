"""Queue an email: render it, give it its final Message-ID, store the exact bytes in the
outbox and (for ticket mail) record it on the ticket — all inside the caller's
transaction. Sending happens later, in ``outbound.sender``; the caller enqueues the
returned id after commit."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postdesk.mail.compose import OutgoingEmail, compose
from postdesk.mail.tokens import make_message_id
from postdesk.storage.models import Message, Outbox, Ticket

if TYPE_CHECKING:
    from postdesk.app import App


def queue_email(session: Session, app: App, *, dedupe_key: str, template: str,
                to: Sequence[str], subject: str, context: dict[str, Any],
                ticket: Ticket | None = None, cc: Sequence[str] = (),
                in_reply_to: str | None = None, references: Sequence[str] = (),
                automatic: bool = True, reply_to: str | None = None,
                kind: str = "system", extra_headers: dict[str, str] | None = None,
                now: datetime | None = None, on_ticket: bool = True) -> Outbox | None:
    """Returns the new outbox row, or None when ``dedupe_key`` was queued before.

    ``on_ticket``: record the email among the ticket's messages (client-facing mail);
    staff alerts and pages are kept in the outbox only."""
    if session.scalar(select(Outbox.id).where(Outbox.dedupe_key == dedupe_key)) is not None:
        return None
    now = now or app.now()
    desk = app.config.desk
    support = desk.support_addresses[0]
    message_id = make_message_id(app.secret, ticket.id if ticket else None,
                                 secrets.token_hex(6), support.split("@", 1)[1])
    org_slug = ticket.org.slug if ticket is not None else None
    body = app.renderer.render(template, {"desk": desk, "ticket": ticket, **context}, org_slug)
    raw = compose(OutgoingEmail(
        from_addr=app.from_address, from_name=desk.name, to=list(to), cc=list(cc),
        subject=subject, body=body, message_id=message_id, date=now,
        reply_to=reply_to or support, in_reply_to=in_reply_to, references=list(references),
        automatic=automatic, extra_headers=extra_headers or {},
    ))
    status = "queued"
    if automatic and over_automatic_limit(session, app, to[0], ticket, now):
        status = "suppressed"   # kept and counted, never sent: loop and flood protection
    row = Outbox(dedupe_key=dedupe_key, ticket_id=ticket.id if ticket else None,
                 template=template, recipient=to[0].lower(), to=list(to), cc=list(cc),
                 subject=subject, message_id=message_id, in_reply_to=in_reply_to,
                 automatic=automatic, raw=raw, status=status, created_at=now)
    session.add(row)
    session.flush()
    if ticket is not None and on_ticket:
        session.add(Message(
            ticket_id=ticket.id, outbox_id=row.id, direction="out", kind=kind,
            dedupe_key=f"out:{message_id}", message_id=message_id, in_reply_to=in_reply_to,
            references=list(references), from_addr=app.from_address, from_name=desk.name,
            to=list(to), cc=list(cc), subject=subject, text=body.text,
            stripped_text=body.text, sent_at=now, created_at=now,
        ))
    return row


def over_automatic_limit(session: Session, app: App, recipient: str, ticket: Ticket | None,
                         now: datetime) -> bool:
    """At most ``auto_reply_limit_per_hour`` automatic emails per outside recipient and per
    ticket in any hour (staff alerts are not limited: staff must hear about breaches)."""
    recipient = recipient.lower()
    if app.config.staff_member(recipient) is not None:
        return False
    limit = app.config.desk.auto_reply_limit_per_hour
    since = now - timedelta(hours=1)
    sent = select(func.count(Outbox.id)).where(
        Outbox.automatic.is_(True), Outbox.created_at >= since, Outbox.status != "suppressed")
    if (session.scalar(sent.where(Outbox.recipient == recipient)) or 0) >= limit:
        return True
    return ticket is not None and (session.scalar(
        sent.where(Outbox.ticket_id == ticket.id, Outbox.recipient == recipient)) or 0) >= limit
