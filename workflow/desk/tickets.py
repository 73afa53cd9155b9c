"""Opening a ticket and storing an email on it, in the Session handed in."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from postdesk.mail.html_safety import sanitize_html
from postdesk.mail.parse import ParsedEmail
from postdesk.storage.blobs import BlobStore
from postdesk.storage.directory import contact_for
from postdesk.storage.models import Attachment, Message, Org, RawMessage, Ticket
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.rules.refs import clean_subject, ticket_ref


def open_ticket(session: Session, *, prefix: str, mail: ParsedEmail, org: Org, requester: str,
                opened_at: datetime, now: datetime) -> Ticket:
    contact_for(session, requester, org,
                (mail.from_name or "") if requester == mail.from_addr else "")
    ticket = Ticket(org_id=org.id, requester_email=requester,
                    subject=clean_subject(mail.subject, prefix), status="new", priority="P3",
                    created_at=opened_at, updated_at=opened_at, cc=[])
    session.add(ticket)
    session.flush()
    add_event(session, ticket, "ticket_created", now, mail.from_addr or requester,
              ref=ticket_ref(prefix, ticket.id))
    return ticket


def inbound_dedupe_key(mail: ParsedEmail, raw: RawMessage) -> str:
    """One email is stored once, whichever door it came by: its Message-ID, or for mail
    without one its bytes."""
    return f"in:{mail.message_id}" if mail.message_id else f"sha:{raw.sha256}"


def store_message(session: Session, blobs: BlobStore, *, raw: RawMessage, mail: ParsedEmail,
                  ticket: Ticket, kind: str, direction: str, text: str | None,
                  max_attachment_bytes: int, now: datetime,
                  author_staff_id: int | None = None) -> Message:
    message = Message(
        ticket_id=ticket.id, raw_id=raw.id, direction=direction, kind=kind,
        dedupe_key=inbound_dedupe_key(mail, raw), message_id=mail.message_id,
        in_reply_to=mail.in_reply_to, references=list(mail.references),
        from_addr=mail.from_addr, from_name=mail.from_name or "",
        author_staff_id=author_staff_id, to=list(mail.to), cc=list(mail.cc),
        subject=mail.subject or "", text=mail.text or "",
        # Sanitised once, here, so no later template can render a client's script.
        html=sanitize_html(mail.html) if mail.html else None,
        stripped_text=text if text is not None else (mail.text or ""),
        sent_at=mail.date, created_at=now)
    session.add(message)
    session.flush()
    for part in mail.attachments:
        too_big = len(part.payload) > max_attachment_bytes
        session.add(Attachment(
            message_id=message.id, filename=part.filename, content_type=part.content_type,
            size=len(part.payload), sha256=None if too_big else blobs.put(part.payload),
            content_id=part.content_id, inline=part.inline,
            note="too large: not kept" if too_big else ("winmail.dat (TNEF)"
                                                         if part.is_tnef else "")))
    return message
