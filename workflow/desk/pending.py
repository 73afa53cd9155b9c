"""Tickets waiting on the client (``pending``), run by the scheduler: after the plan's
``pending_remind_after`` (business time on its calendar, from when the ticket went
pending) the requester gets one reminder; after ``pending_close_after`` the ticket is
resolved with a note to them. Both are events; 0 turns either off.

Idempotent and safe with two schedulers: each ticket is taken with a row lock that skips
tickets another scheduler holds (PostgreSQL; SQLite has one writer anyway), and each
email's dedupe key names the pending period (``paused_since``), so one period gets at most
one reminder and one closing note, whatever runs twice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postdesk.storage.models import Ticket
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.outbox import OutboxWriter, release_drafts
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.desk.sla_clocks import set_status
from postdesk.workflow.desk.ticket_lookup import client_thread
from postdesk.workflow.rules.durations import Duration
from postdesk.workflow.rules.refs import MAX_SUBJECT, ticket_ref
from postdesk.workflow.rules.sla import due_at

BATCH = 500


@dataclass
class PendingResult:
    reminded: int = 0
    resolved: int = 0


def _shortest_wait(services: Services) -> Duration | None:
    """The shortest non-zero setting over all plans: no ticket pending for less wall-clock
    time than that can be due (business time never runs faster than the wall clock)."""
    waits = [d for plan in services.config.plans.values()
             for d in (plan.pending_remind_after, plan.pending_close_after) if d]
    return min(waits, key=lambda d: d.as_timedelta()) if waits else None


def run(services: Services, dispatch: Dispatch, now: datetime | None = None) -> PendingResult:
    now = now or services.now()
    result = PendingResult()
    shortest = _shortest_wait(services)
    if shortest is None:
        return result
    since = func.coalesce(Ticket.paused_since, Ticket.updated_at)
    outbox_ids: list[int] = []
    with services.sessions() as session, session.begin():
        writer = OutboxWriter(session, services, now=now)
        for ticket in session.scalars(
                select(Ticket).where(Ticket.status == "pending",
                                     since <= now - shortest.as_timedelta())
                .order_by(Ticket.id).with_for_update(skip_locked=True).limit(BATCH)):
            _one(services, session, writer, ticket, now, result)
        outbox_ids = list(writer.queued_ids)
    release_drafts(services, dispatch, outbox_ids)
    return result


def _one(services: Services, session: Session, writer: OutboxWriter, ticket: Ticket,
         now: datetime, result: PendingResult) -> None:
    plan = services.config.plans.get(ticket.org.plan)
    if plan is None:
        return
    calendar = services.calendars[plan.calendar]
    started = ticket.paused_since or ticket.updated_at
    period = started.isoformat()
    close, remind = plan.pending_close_after, plan.pending_remind_after
    if close and due_at(calendar, started, close) <= now:
        set_status(services.clocks(session), ticket, "resolved", now, "scheduler")
        add_event(session, ticket, "pending_auto_resolved", now, "scheduler",
                  pending_since=period, after=str(close))
        _tell_client(services, session, writer, ticket, "pending_resolved",
                     f"pending-resolved:{ticket.id}:{period}", close)
        result.resolved += 1
    elif remind and due_at(calendar, started, remind) <= now:
        row = _tell_client(services, session, writer, ticket, "pending_reminder",
                           f"pending-reminder:{ticket.id}:{period}", remind)
        if row:
            add_event(session, ticket, "pending_reminder_sent", now, "scheduler",
                      pending_since=period, to=ticket.requester_email)
            result.reminded += 1


def _tell_client(services: Services, session: Session, writer: OutboxWriter, ticket: Ticket,
                 template: str, dedupe_key: str, after: Duration) -> object:
    ref = ticket_ref(services.config.desk.ticket_prefix, ticket.id)
    in_reply_to, references = client_thread(session, ticket)
    return writer.queue(
        dedupe_key=dedupe_key, template=template, to=[ticket.requester_email],
        cc=[c for c in ticket.cc if c != ticket.requester_email],
        subject=f"Re: [{ref}] {ticket.subject}"[:MAX_SUBJECT], ticket=ticket,
        in_reply_to=in_reply_to, references=references, kind="system",
        context={"ref": ref, "waited": str(after),
                 "close_after": str(services.config.plans[ticket.org.plan]
                                    .pending_close_after)})
