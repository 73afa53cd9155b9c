"""Merging two tickets (``#merge PD-n``) and splitting a message off into a new ticket
(``#split``), in the caller's transaction.

A merge moves the source ticket's messages (their attachments with them), logged time and
cc onto the target, records the source's SLA clock history on the target, closes the
source and leaves an event ``merged_into`` on it: that event is the pointer every later
email to the source follows (``follow_merges``), so replies to either thread land on the
target. Only tickets of one org are merged: a merge across orgs would show one client's
conversation to another. The source's requester and cc are told once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from postdesk.storage.models import Event, Message, Outbox, SlaClock, Staff, Ticket, TimeEntry
from postdesk.workflow.desk.events import add_event, write_deferred_events
from postdesk.workflow.desk.outbox import OutboxWriter
from postdesk.workflow.desk.rows import insert_now
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.sla_clocks import set_status
from postdesk.workflow.desk.ticket_lookup import client_thread
from postdesk.workflow.rules.refs import MAX_SUBJECT, clean_subject, ticket_ref

MAX_HOPS = 20   # a chain of merges longer than this is a loop or a mistake: stop following


def merged_into(session: Session, ticket_id: int) -> int | None:
    write_deferred_events(session)   # a merge recorded earlier in this same block
    data = session.scalar(select(Event.data).where(
        Event.ticket_id == ticket_id, Event.kind == "merged_into")
        .order_by(Event.id.desc()).limit(1))
    return int(data["into"]) if data else None


def follow_merges(session: Session, ticket: Ticket) -> Ticket:
    """The ticket that now holds ``ticket``'s conversation (itself unless merged)."""
    for _ in range(MAX_HOPS):
        if ticket.status != "closed":
            return ticket
        target_id = merged_into(session, ticket.id)
        target = session.get(Ticket, target_id) if target_id else None
        if target is None or target.org_id != ticket.org_id:
            return ticket
        ticket = target
    return ticket


def merge_refusal(session: Session, prefix: str, source: Ticket, written_prefix: str | None,
                  number: int) -> tuple[Ticket | None, str | None]:
    """The target of ``#merge``, or why there is none."""
    if written_prefix is not None and written_prefix != prefix:
        return None, f"{written_prefix}-{number} is not a ticket of this desk ({prefix}-n)"
    target = session.get(Ticket, number)
    ref = ticket_ref(prefix, number)
    if target is None:
        return None, f"there is no ticket {ref}"
    if target.id == source.id:
        return None, f"a ticket cannot be merged into itself ({ref})"
    if target.org_id != source.org_id:
        # Said to staff only; nothing of it reaches a client.
        return None, f"{ref} belongs to another org; only tickets of one org can be merged"
    if target.status == "closed":
        return None, f"{ref} is closed"
    return target, None


def merge_tickets(session: Session, services: Services, outbox: OutboxWriter, *,
                  source: Ticket, target: Ticket, staff: Staff, now: datetime) -> None:
    prefix = services.config.desk.ticket_prefix
    source_ref, target_ref = ticket_ref(prefix, source.id), ticket_ref(prefix, target.id)
    # Tell the source's people first, threaded on the conversation they know.
    in_reply_to, references = client_thread(session, source)
    outbox.queue(
        dedupe_key=f"merged:{source.id}", template="ticket_merged",
        to=[source.requester_email],
        cc=[c for c in source.cc if c != source.requester_email],
        subject=f"Re: [{source_ref}] {source.subject}"[:MAX_SUBJECT], ticket=source,
        in_reply_to=in_reply_to, references=references, kind="system",
        context={"ref": source_ref, "target_ref": target_ref,
                 "target_subject": target.subject})
    keeper = services.clocks(session)
    clocks = [_clock_history(c) for c in session.scalars(
        select(SlaClock).where(SlaClock.ticket_id == source.id).order_by(SlaClock.id))]
    set_status(keeper, source, "closed", now, staff.email)
    moved = len(session.scalars(select(Message.id).where(Message.ticket_id == source.id))
                .all())
    session.execute(update(Message).where(Message.ticket_id == source.id)
                    .values(ticket_id=target.id)
                    .execution_options(synchronize_session="fetch"))
    session.execute(update(TimeEntry).where(TimeEntry.ticket_id == source.id)
                    .values(ticket_id=target.id)
                    .execution_options(synchronize_session="fetch"))
    people = [source.requester_email, *source.cc]
    target.cc = list(dict.fromkeys([*target.cc, *(p for p in people
                                                  if p != target.requester_email)]))
    if target.priority > source.priority:     # "P1" < "P3": keep the more urgent one
        target.priority = source.priority
        keeper.reprioritise(target, now)
    target.updated_at = now
    add_event(session, source, "merged_into", now, staff.email, into=target.id,
              ref=target_ref)
    add_event(session, target, "merged_from", now, staff.email, source=source.id,
              ref=source_ref, messages=moved, cc=target.cc, clocks=clocks)


def _clock_history(clock: SlaClock) -> dict[str, Any]:
    return {"target": clock.target, "cycle": clock.cycle,
            "started_at": clock.started_at.isoformat(), "due_at": clock.due_at.isoformat(),
            "stopped_at": clock.stopped_at.isoformat() if clock.stopped_at else None,
            "breached_at": clock.breached_at.isoformat() if clock.breached_at else None}


# --- split --------------------------------------------------------------------------------

def message_to_split(session: Session, ticket: Ticket, in_reply_to: str | None,
                     reply_text: str) -> Message | None:
    """The client message a ``#split`` reply is about: the one the staff notification it
    answers was sent for, else the newest client message the reply quotes."""
    client_messages = list(session.scalars(
        select(Message).where(Message.ticket_id == ticket.id, Message.direction == "in",
                              Message.author_staff_id.is_(None), Message.kind == "public")
        .order_by(Message.id.desc())))
    if in_reply_to:
        key = session.scalar(select(Outbox.dedupe_key).where(
            Outbox.message_id == in_reply_to, Outbox.template == "staff_notification",
            Outbox.ticket_id == ticket.id))
        if key:
            raw_id = int(key.split(":")[1])
            for message in client_messages:
                if message.raw_id == raw_id:
                    return message
    quoted = _words(reply_text)
    for message in client_messages:
        words = _words(message.stripped_text or message.text)
        if words and words[:40] == _find(quoted, words[:40]):
            return message
    return None


def _words(text: str) -> list[str]:
    return [w for w in (text or "").replace(">", " ").split() if w]


def _find(haystack: list[str], needle: list[str]) -> list[str] | None:
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if haystack[i:i + n] == needle:
            return needle
    return None


def split_refusal(session: Session, ticket: Ticket, message: Message | None) -> str | None:
    if message is None:
        return ("#split needs a reply that quotes the client's message to move (reply to "
                "the notification of that message)")
    others = session.scalar(select(Message.id).where(
        Message.ticket_id == ticket.id, Message.direction == "in",
        Message.author_staff_id.is_(None), Message.id != message.id).limit(1))
    if others is None:
        return "that is the ticket's only client message: there is nothing to split from"
    return None


def split_message(session: Session, services: Services, *, ticket: Ticket,
                  message: Message, staff: Staff, now: datetime) -> Ticket:
    """Move ``message`` (with its attachments) into a new ticket of the same org, its
    sender the requester, assigned to the staff member who split it; its clocks start
    from when the message arrived."""
    prefix = services.config.desk.ticket_prefix
    requester = (message.from_addr or ticket.requester_email).lower()
    new = Ticket(org_id=ticket.org_id, requester_email=requester,
                 subject=clean_subject(message.subject, prefix) or ticket.subject,
                 status="new", priority="P3", assignee_id=staff.id,
                 created_at=message.created_at, updated_at=now, first_responded_at=None,
                 last_public_update_at=None, resolved_at=None, closed_at=None,
                 paused_since=None, cc=[], chargeable=False)
    insert_now(session, new)
    new.org = ticket.org
    message.ticket_id = new.id
    services.clocks(session).start_ticket(new, message.created_at)
    new_ref, old_ref = ticket_ref(prefix, new.id), ticket_ref(prefix, ticket.id)
    add_event(session, new, "ticket_created", now, staff.email, ref=new_ref,
              split_from=ticket.id)
    add_event(session, ticket, "split_into", now, staff.email, into=new.id, ref=new_ref,
              message=message.id)
    add_event(session, new, "split_from", now, staff.email, source=ticket.id, ref=old_ref,
              message=message.id)
    return new


def tell_split(services: Services, outbox: OutboxWriter, session: Session, *, old: Ticket,
               new: Ticket, message: Message) -> None:
    """The client learns the new reference, in the thread of the message that moved."""
    prefix = services.config.desk.ticket_prefix
    new_ref = ticket_ref(prefix, new.id)
    outbox.queue(
        dedupe_key=f"split:{message.id}", template="ticket_split", to=[new.requester_email],
        subject=f"Re: [{new_ref}] {new.subject}"[:MAX_SUBJECT], ticket=new,
        in_reply_to=message.message_id,
        references=[*message.references, *([message.message_id] if message.message_id
                                           else [])], kind="system",
        context={"ref": new_ref, "old_ref": ticket_ref(prefix, old.id),
                 "old_subject": old.subject})
