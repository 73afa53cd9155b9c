"""Opening a ticket and storing an email on it, in the Session handed in."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import cast

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from postdesk.mail.html_safety import sanitize_html
from postdesk.mail.parse import ParsedEmail
from postdesk.storage.blobs import BlobStore
from postdesk.storage.db import NO_BUFFERED_ROWS_NEEDED
from postdesk.storage.directory import ensure_contact
from postdesk.storage.models import Attachment, Message, Org, RawMessage, Ticket
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.recent import noted_ticket
from postdesk.workflow.desk.rows import buffered_values, insert_now
from postdesk.workflow.rules.refs import clean_subject, ticket_ref


def open_ticket(session: Session, *, prefix: str, mail: ParsedEmail, org: Org, requester: str,
                opened_at: datetime, now: datetime, priority: str = "P3",
                assignee_id: int | None = None) -> Ticket:
    """The new ticket, written at once. ``opened_at``: when it opened (for imported
    history, the email's own date); ``now``: when it is written (its ``updated_at``);
    ``priority`` and ``assignee_id``: what it opens with."""
    ensure_contact(session, requester, org,
                   (mail.from_name or "") if requester == mail.from_addr else "")
    ticket = Ticket(org_id=org.id, requester_email=requester,
                    subject=clean_subject(mail.subject, prefix), status="new", priority=priority,
                    assignee_id=assignee_id, created_at=opened_at, updated_at=now,
                    first_responded_at=None, last_public_update_at=None, resolved_at=None,
                    closed_at=None, paused_since=None, cc=[], chargeable=False)
    insert_now(session, ticket)   # its number is in the event below, and all that follows
    noted_ticket(session, requester, opened_at)
    add_event(session, ticket, "ticket_created", now, mail.from_addr or requester,
              ref=ticket_ref(prefix, ticket.id))
    return ticket


def inbound_dedupe_key(mail: ParsedEmail, raw: RawMessage) -> str:
    """One email is stored once, whichever door it came by: its Message-ID, or for mail
    without one its bytes."""
    return dedupe_key(mail.message_id, raw.sha256)


def dedupe_key(message_id: str | None, sha256: str) -> str:
    """``inbound_dedupe_key`` of an email with this Message-ID and these bytes."""
    return f"in:{message_id}" if message_id else f"sha:{sha256}"


# Built once and run as Core on the session's connection: every email asks, and the
# ORM's execution path (and building the statement per call) cost more than the query.
# Nothing pending can be missed: messages are written as they are stored (insert_now), or
# held back by an import's batch, whose rows ``stored_on`` looks through itself.
_STORED = (select(Message.ticket_id).where(Message.dedupe_key == bindparam("key"))
           .execution_options(**NO_BUFFERED_ROWS_NEEDED))
_STORED_KEYS = select(Message.dedupe_key).where(
    Message.dedupe_key.in_(bindparam("keys", expanding=True)))
# session.info key: the dedupe keys looked up together and not stored then, not yet asked.
_NOT_STORED = "postdesk_keys_not_stored"


def stored_on(session: Session, key: str) -> int | None:
    """The ticket an inbound email with dedupe ``key`` is stored on, or None."""
    not_stored = session.info.get(_NOT_STORED)
    if not_stored is not None and key in not_stored:
        # Once only: a later email with the same key must find this one if it is stored.
        not_stored.discard(key)
        return None
    for row in buffered_values(session, Message):
        if row["dedupe_key"] == key:
            return cast(int, row["ticket_id"])
    return session.connection().execute(_STORED, {"key": key}).scalar()


@contextmanager
def looked_up_together(session: Session, keys: Collection[str]) -> Iterator[None]:
    """Look ``keys`` up in one statement now; inside the block, ``stored_on`` answers for
    each of them that was not stored without another (an import's batch, whose keys its
    helper worked out as it parsed). What another transaction stores meanwhile under one
    of them is not seen, but cannot be missed: storing it again fails the unique key, and
    the batch is recorded again with a savepoint per email, asking each key anew."""
    if not keys:
        yield
        return
    stored = set(session.connection().execute(_STORED_KEYS, {"keys": list(keys)}).scalars())
    session.info[_NOT_STORED] = set(keys) - stored
    try:
        yield
    finally:
        session.info.pop(_NOT_STORED, None)


MAX_DEFECTS, MAX_DEFECT_CHARS = 20, 200


def stored_defects(defects: list[str]) -> list[str] | None:
    """The parser's defects as kept on the message: None when there are none; a message
    built to have thousands (one per broken part) keeps the first few, and says how many
    more there were, each cut to a line's length (they may quote the damaged input)."""
    if not defects:
        return None
    kept = [d if len(d) <= MAX_DEFECT_CHARS else d[:MAX_DEFECT_CHARS - 1] + "\u2026"
            for d in defects[:MAX_DEFECTS]]
    if len(defects) > MAX_DEFECTS:
        kept.append(f"and {len(defects) - MAX_DEFECTS} more")
    return kept


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
        outbox_id=None, sent_at=mail.date, created_at=now,
        parse_defects=stored_defects(mail.defects))
    # Written now: its id is for its attachments and for callers (time entries cite it).
    insert_now(session, message)
    for part in mail.attachments:
        # The parser already knows a part that is over the limit (and did not decode it).
        too_big = part.too_large or len(part.payload) > max_attachment_bytes
        size = part.size if part.size >= 0 else len(part.payload)
        session.add(Attachment(
            message_id=message.id, filename=part.filename, content_type=part.content_type,
            size=size, sha256=None if too_big else blobs.put(part.payload),
            content_id=part.content_id, inline=part.inline,
            note="too large: not kept" if too_big else ("winmail.dat (TNEF)"
                                                         if part.is_tnef else "")))
    return message
