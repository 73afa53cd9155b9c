"""Support-hour allowance of an org (database side): the month's balance, time logged per
ticket, and logging time with the over-allowance warning. The month arithmetic (rollover,
cap, overuse) is the pure ``workflow.rules.allowance``; the month an instant belongs to
is decided in the org's zone (``workflow.rules.zones``), for booking and balance alike."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postdesk.storage.models import Message, Org, Staff, Ticket, TimeEntry
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.outbox import OutboxWriter
from postdesk.workflow.rules.allowance import MonthBalance, month_balances, month_of, would_exceed
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.zones import org_zone


def org_month_balance(session: Session, config: Config, org: Org, now: datetime
                      ) -> MonthBalance | None:
    """This month's balance for an org, or None when its plan has no allowance."""
    plan = config.plans[org.plan]
    if not plan.monthly_allowance:
        return None
    tz = org_zone(config, org.slug, org.plan)
    rows = session.execute(
        select(TimeEntry.year, TimeEntry.month, func.sum(TimeEntry.seconds))
        .where(TimeEntry.org_id == org.id).group_by(TimeEntry.year, TimeEntry.month)).all()
    usage = {(y, m): timedelta(seconds=int(s)) for y, m, s in rows}
    current = month_of(now, tz)
    # The allowance accrues from the org's first ticket (or first logged time).
    first_ticket = session.scalar(select(func.min(Ticket.created_at)).where(
        Ticket.org_id == org.id))
    starts = [*usage, current] + ([month_of(first_ticket, tz)] if first_ticket else [])
    first = min(starts)
    cap = plan.rollover_cap.as_timedelta() if plan.rollover_cap is not None else None
    balances = month_balances(monthly_allowance=plan.monthly_allowance.as_timedelta(),
                              rollover_cap=cap, usage_by_month=usage, first_month=first,
                              through_month=current)
    return balances[-1]


def per_ticket_usage(session: Session, org: Org, year: int, month: int
                     ) -> list[tuple[Ticket, timedelta]]:
    rows = session.execute(
        select(TimeEntry.ticket_id, func.sum(TimeEntry.seconds))
        .where(TimeEntry.org_id == org.id, TimeEntry.year == year, TimeEntry.month == month)
        .group_by(TimeEntry.ticket_id).order_by(TimeEntry.ticket_id)).all()
    usage = []
    for tid, seconds in rows:
        ticket = session.get(Ticket, tid)
        if ticket is not None:
            usage.append((ticket, timedelta(seconds=int(seconds))))
    return usage


def log_time(session: Session, config: Config, outbox: OutboxWriter, *, ticket: Ticket,
             staff: Staff, duration: timedelta, message: Message, now: datetime) -> None:
    """Book ``#time`` in the org's month; the first entry that goes over the allowance
    tells the requester and the leads, once per org and month."""
    year, month = month_of(now, org_zone(config, ticket.org.slug, ticket.org.plan))
    before = org_month_balance(session, config, ticket.org, now)
    session.add(TimeEntry(ticket_id=ticket.id, org_id=ticket.org_id, staff_id=staff.id,
                          seconds=int(duration.total_seconds()), year=year, month=month,
                          logged_at=now, source_message_id=message.id))
    add_event(session, ticket, "time_logged", now, staff.email,
              seconds=int(duration.total_seconds()))
    if before is None or not would_exceed(before, duration):
        return
    # The "we will contact you before starting work" promise.
    ref = ticket_ref(config.desk.ticket_prefix, ticket.id)
    people = [ticket.requester_email, *(s.email for s in config.leads())]
    for email in dict.fromkeys(people):
        outbox.queue(
            dedupe_key=f"allowance:{ticket.org.slug}:{year}-{month}:{email}",
            template="allowance_exceeded", to=[email],
            subject=f"[{ref}] Support allowance for {ticket.org.name} used up", ticket=ticket,
            context={"ref": ref, "remaining": before.remaining, "logged": duration,
                     "org_name": ticket.org.name})
    add_event(session, ticket, "allowance_exceeded", now, "system",
              remaining_seconds=int(before.remaining.total_seconds()))
