"""The figures of the manager digest, read from the database at one instant.

What a clock *means* (met, missed, median, bars) is the pure ``workflow.rules.report``;
this module only gathers rows and hands them there. The result is plain values (strings,
numbers, datetimes, lists, dicts): it is the template data of an outbox draft, stored as
JSON until rendered. The layout lives in ``templates/digest.*``.

Choices, documented in docs/reference.md:
* compliance covers clocks started this month (desk zone) whose outcome is known — met, or
  missed (stopped late, or running past due); ``followup`` clocks are commitments, listed
  separately, not SLA targets;
* "breaches since the last digest" are clocks whose due instant fell in the period and
  that were missed — measured, not taken from breach alerts;
* quarantine counts are what sits in quarantine now, by reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from postdesk.storage.models import Org, RawMessage, RawStatus, SlaClock, Ticket
from postdesk.workflow.desk.allowance import org_month_balance
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.allowance import format_hours
from postdesk.workflow.rules.calendar import BusinessCalendar
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.report import (
    allowance_bar,
    clock_outcome,
    compliance_bar,
    format_duration,
    median,
    percent,
)
from postdesk.workflow.rules.zones import desk_zone

SLA_TARGETS = ("first_response", "next_update", "resolution")
TARGET_LABELS = {"first_response": "First response", "next_update": "Next update",
                 "resolution": "Resolution", "followup": "Follow-up"}
_OPEN_STATUSES = ("resolved", "closed")


@dataclass
class Digest:
    """The digest's data (plain values: see the module docstring)."""

    period: str
    since: datetime
    now: datetime | None = None
    timezone: str = "UTC"
    since_text: str = ""
    now_text: str = ""
    breaches: list[dict[str, Any]] = field(default_factory=list)
    at_risk: list[dict[str, Any]] = field(default_factory=list)
    open_p1: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)
    waiting_days: int = 3
    followups_missed: list[dict[str, Any]] = field(default_factory=list)
    compliance: list[dict[str, Any]] = field(default_factory=list)
    allowance: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)


def business_time(calendar: BusinessCalendar, clock: SlaClock, end: datetime) -> timedelta:
    """Business time a clock ran from its start to ``end``, net of its pauses."""
    paused = timedelta(seconds=clock.paused_business_seconds or 0)
    return max(calendar.elapsed(clock.started_at, end) - paused, timedelta(0))


def local_text(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%a %d %b %H:%M %Z")


def _bar(bar: Any) -> dict[str, Any]:
    return {"filled": bar.filled, "empty": bar.empty, "colour": bar.colour}


def _ticket_row(prefix: str, ticket: Ticket) -> dict[str, Any]:
    return {"ref": ticket_ref(prefix, ticket.id), "subject": ticket.subject,
            "org": ticket.org.slug, "org_name": ticket.org.name,
            "priority": ticket.priority, "status": ticket.status,
            "assignee": ticket.assignee.email if ticket.assignee else "unassigned"}


def compliance_rows(session: Session, services: Services, since: datetime, now: datetime,
                    *, until: datetime | None = None, org_id: int | None = None
                    ) -> list[dict[str, Any]]:
    """Per client (by name) and priority: each target's met/missed and bar, and the
    median first-response time in business hours, for clocks started from ``since`` up
    to ``until`` (default: ``now``), of one org or all; outcomes as known at ``now``."""
    tally: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(
        lambda: {t: [0, 0] for t in SLA_TARGETS})
    responses: dict[tuple[str, str], list[timedelta]] = defaultdict(list)
    for clock, ticket in session.execute(
            select(SlaClock, Ticket).join(Ticket, Ticket.id == SlaClock.ticket_id)
            .options(selectinload(Ticket.org))
            .where(SlaClock.started_at >= since, SlaClock.started_at < (until or now),
                   SlaClock.target.in_(SLA_TARGETS),
                   *([Ticket.org_id == org_id] if org_id is not None else []))):
        key = (ticket.org.name, ticket.priority)
        outcome = clock_outcome(clock.due_at, clock.stopped_at, now)
        if outcome == "open":
            continue
        counts = tally[key][clock.target]
        counts[0] += outcome == "met"
        counts[1] += 1
        if clock.target == "first_response" and clock.stopped_at is not None:
            calendar = services.calendars[clock.calendar]
            responses[key].append(business_time(calendar, clock, clock.stopped_at))
    rows = []
    for (org_name, priority) in sorted(tally):
        targets = []
        for target, (met, total) in tally[(org_name, priority)].items():
            if not total:
                continue
            value = percent(met, total)
            targets.append({"target": target, "label": TARGET_LABELS[target], "met": met,
                            "missed": total - met, "total": total, "percent": value,
                            "bar": _bar(compliance_bar(value))})
        response = median(responses.get((org_name, priority), []))
        rows.append({"org_name": org_name, "priority": priority, "targets": targets,
                     "median_first_response": format_duration(response),
                     "median_first_response_seconds":
                         int(response.total_seconds()) if response is not None else None})
    return rows


def build_report(services: Services, now: datetime, period: str, since: datetime) -> Digest:
    config = services.config
    prefix = config.desk.ticket_prefix
    zone = desk_zone(config)
    waiting_days = config.digest.waiting_days
    digest = Digest(period=period, since=since, now=now, timezone=str(zone),
                    waiting_days=waiting_days, since_text=local_text(since, zone),
                    now_text=local_text(now, zone))
    month_start = now.astimezone(zone).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0).astimezone(now.tzinfo)
    with services.sessions() as session:
        # Clocks that fell due in the period and were missed: SLA breaches and missed
        # follow-up commitments, measured from the clocks themselves.
        for clock, ticket in session.execute(
                select(SlaClock, Ticket).join(Ticket, Ticket.id == SlaClock.ticket_id)
                .options(selectinload(Ticket.org), selectinload(Ticket.assignee))
                .where(SlaClock.due_at > since, SlaClock.due_at <= now)
                .order_by(SlaClock.due_at, SlaClock.id)):
            if clock_outcome(clock.due_at, clock.stopped_at, now) != "missed":
                continue
            late = (clock.stopped_at or now) - clock.due_at
            row = {**_ticket_row(prefix, ticket), "target": clock.target,
                   "label": TARGET_LABELS.get(clock.target, clock.target),
                   "due": clock.due_at, "due_text": local_text(clock.due_at, zone),
                   "late": format_duration(late),
                   "late_seconds": int(late.total_seconds()),
                   "still_open": clock.stopped_at is None}
            (digest.followups_missed if clock.target == "followup"
             else digest.breaches).append(row)
        for clock, ticket in session.execute(
                select(SlaClock, Ticket).join(Ticket, Ticket.id == SlaClock.ticket_id)
                .options(selectinload(Ticket.org), selectinload(Ticket.assignee))
                .where(SlaClock.stopped_at.is_(None), SlaClock.paused_since.is_(None),
                       SlaClock.risk_at.is_not(None), SlaClock.risk_at <= now,
                       SlaClock.due_at > now)
                .order_by(SlaClock.due_at, SlaClock.id)):
            left = clock.due_at - now
            digest.at_risk.append({**_ticket_row(prefix, ticket), "target": clock.target,
                                   "label": TARGET_LABELS.get(clock.target, clock.target),
                                   "due": clock.due_at,
                                   "due_text": local_text(clock.due_at, zone),
                                   "left": format_duration(left),
                                   "left_seconds": int(left.total_seconds())})
        for ticket in session.scalars(
                select(Ticket).options(selectinload(Ticket.org), selectinload(Ticket.assignee))
                .where(Ticket.priority == "P1", Ticket.status.not_in(_OPEN_STATUSES))
                .order_by(Ticket.id)):
            digest.open_p1.append({**_ticket_row(prefix, ticket),
                                   "age": format_duration(now - ticket.created_at)})
        waiting_since = now - timedelta(days=waiting_days)
        for ticket in session.scalars(
                select(Ticket).options(selectinload(Ticket.org), selectinload(Ticket.assignee))
                .where(Ticket.status == "pending", Ticket.paused_since.is_not(None),
                       Ticket.paused_since <= waiting_since)
                .order_by(Ticket.paused_since, Ticket.id)):
            assert ticket.paused_since is not None
            digest.waiting.append({**_ticket_row(prefix, ticket),
                                   "waiting": format_duration(now - ticket.paused_since)})
        digest.compliance = compliance_rows(session, services, month_start, now)
        for org in session.scalars(select(Org).where(Org.active.is_(True)).order_by(Org.name)):
            balance = org_month_balance(session, config, org, now)
            if balance is None:
                continue
            available = balance.allowance + balance.rollover_in
            digest.allowance.append({
                "org_name": org.name, "allowance": format_hours(balance.allowance),
                "rollover_in": format_hours(balance.rollover_in),
                "used": format_hours(balance.used), "remaining": format_hours(balance.remaining),
                "over": balance.remaining < timedelta(0),
                "bar": _bar(allowance_bar(balance.used, available))})
        digest.quarantine = [
            {"reason": reason or "unknown", "count": int(count)}
            for reason, count in session.execute(
                select(RawMessage.reason, func.count()).where(
                    RawMessage.status == RawStatus.QUARANTINED)
                .group_by(RawMessage.reason).order_by(RawMessage.reason))]
    return digest
