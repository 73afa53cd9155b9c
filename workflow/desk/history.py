"""Imported history, after the import: its tickets filed in the status asked for, and
its SLA clocks settled silently.

Imported mail is old: its clocks started at the emails' own Dates, so most crossed their
at-risk point and their due time long before the import ran. Those crossings are facts
of the past — recorded (the clock's ``at_risk_at`` / ``breached_at`` set to the instant
it crossed, an ``sla_breached`` event marked ``silent``) so reports count them — but
nobody is alerted about them: the breach scan only claims crossings not yet recorded, so
neither this run nor the next ``serve`` sends an alert for an instant before the import.
Crossings after the import ran are alerted as usual.

Every function here is idempotent: re-running an import settles the same clocks once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postdesk.storage.models import Message, SlaClock, Ticket
from postdesk.workflow.desk.events import add_event
from postdesk.workflow.desk.sla_clocks import ClockKeeper, set_status
from postdesk.workflow.rules.commands import SETTABLE_STATUSES

IMPORT_ACTOR = "import"


def last_activity(session: Session, ticket: Ticket) -> datetime:
    """When the ticket's history ends: its latest email's own Date (never before the
    ticket opened)."""
    latest = session.scalar(select(func.max(Message.sent_at))
                            .where(Message.ticket_id == ticket.id))
    return max(latest, ticket.created_at) if latest is not None else ticket.created_at


def file_as(keeper: ClockKeeper, tickets: Iterable[Ticket], status: str) -> int:
    """Put each ticket in ``status`` as of its last activity (so ``closed`` stops its
    clocks where its history ends); returns how many changed."""
    if status not in SETTABLE_STATUSES:
        raise ValueError(f"unknown status {status!r} (use {', '.join(SETTABLE_STATUSES)})")
    changed = 0
    for ticket in tickets:
        changed += set_status(keeper, ticket, status, last_activity(keeper.session, ticket),
                              IMPORT_ACTOR)
    return changed


def settle_before(session: Session, ticket_ids: Iterable[int], before: datetime) -> int:
    """Record, without alerting, every crossing of the tickets' running clocks at or
    before ``before``; returns how many clocks it touched."""
    ids = list(ticket_ids)
    touched = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for clock in session.scalars(select(SlaClock).where(
                SlaClock.ticket_id.in_(chunk), SlaClock.stopped_at.is_(None),
                SlaClock.paused_since.is_(None),
                (SlaClock.breached_at.is_(None) & (SlaClock.due_at <= before))
                | (SlaClock.at_risk_at.is_(None) & (SlaClock.risk_at <= before)))):
            touched += 1
            if clock.breached_at is None and clock.due_at <= before:
                clock.breached_at = clock.due_at
                ticket = session.get_one(Ticket, clock.ticket_id)
                event = "followup_missed" if clock.target == "followup" else "sla_breached"
                add_event(session, ticket, event, clock.due_at, IMPORT_ACTOR,
                          target=clock.target, cycle=clock.cycle,
                          due_at=clock.due_at.isoformat(), silent=True)
            if clock.at_risk_at is None:
                clock.at_risk_at = clock.risk_at or clock.due_at
    return touched
