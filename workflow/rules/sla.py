"""SLA rules of a plan, pure: which targets apply at a priority, on which calendar, and
when each is due or at risk given the spans it was paused.

Targets: ``first_response``, ``next_update`` (longest gap allowed between public
updates), ``resolution``; any may be absent (best effort)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from postdesk.workflow.rules.calendar import BusinessCalendar
from postdesk.workflow.rules.config import TARGETS, CalendarConfig, Config, PlanConfig
from postdesk.workflow.rules.durations import Duration


def calendar_from_config(cfg: CalendarConfig) -> BusinessCalendar:
    if cfg.always_open:
        return BusinessCalendar(timezone=cfg.timezone, always_open=True)
    holidays = cfg.holidays or {}
    return BusinessCalendar(timezone=cfg.timezone, hours=cfg.hours,
                            holidays_country=holidays.get("country"),
                            holidays_subdiv=holidays.get("subdiv"), closed=cfg.closed)


def build_calendars(config: Config) -> dict[str, BusinessCalendar]:
    return {name: calendar_from_config(c) for name, c in config.calendars.items()}


@dataclass(frozen=True)
class Target:
    kind: str            # first_response | next_update | resolution | followup
    duration: Duration
    calendar_name: str


def targets_for(plan: PlanConfig, priority: str) -> list[Target]:
    out = []
    for kind in TARGETS:
        duration = plan.target(kind, priority)
        if duration:
            out.append(Target(kind, duration, plan.calendar_for(priority)))
    return out


def target_for(plan: PlanConfig, priority: str, kind: str) -> Target | None:
    return next((t for t in targets_for(plan, priority) if t.kind == kind), None)


Span = tuple[datetime, datetime]


def due_at(calendar: BusinessCalendar, start: datetime, target: Duration,
           pauses: Sequence[Span] = ()) -> datetime:
    """Due instant: the target's business time after ``start`` on ``calendar``, pushed
    back by the business time of each pause span, measured on that same calendar.

    Only pauses that begin before the clock ran out count (a pause after a breach does
    not un-breach it), and only their part after ``start``: the due instant is the first
    moment at which the target's business time has run while not paused. ``calendar`` is
    the calendar in force now, so after a priority change onto another calendar every
    span is measured again on the new one."""
    return _past_pauses(calendar, start, calendar.add(start, target), pauses)


def risk_at(calendar: BusinessCalendar, start: datetime, target: Duration, share: float,
            pauses: Sequence[Span] = ()) -> datetime:
    """When ``share`` of the *net* target has run: the target's business length (for a
    day target, the business time of the days it crosses) times ``share``, counted from
    ``start`` while not paused — the pauses do not enlarge the share."""
    length = calendar.elapsed(start, calendar.add(start, target))
    share_of = Duration(seconds=int(length.total_seconds() * share))
    return _past_pauses(calendar, start, calendar.add(start, share_of), pauses)


def paused_business_time(calendar: BusinessCalendar, start: datetime, due: datetime,
                         pauses: Sequence[Span]) -> timedelta:
    """The business time of the pauses that pushed ``due`` (for display and reports)."""
    return sum((calendar.elapsed(a, b) for a, b in _clipped(start, pauses) if a < due),
               timedelta(0))


def _past_pauses(calendar: BusinessCalendar, start: datetime, reached: datetime,
                 pauses: Sequence[Span]) -> datetime:
    """``reached`` (the instant an unpaused clock would get there), moved past each pause
    that began before it by that pause's business time. Spans are merged first so time
    paused twice is not added twice."""
    for span_start, span_end in _clipped(start, pauses):
        if span_start >= reached:
            break
        reached = calendar.add(reached, Duration(
            seconds=int(calendar.elapsed(span_start, span_end).total_seconds())))
    return reached


def _clipped(start: datetime, pauses: Sequence[Span]) -> list[Span]:
    """The spans after ``start``, in order, overlapping ones merged."""
    merged: list[Span] = []
    for span_start, span_end in sorted((max(a, start), b) for a, b in pauses if b > start):
        if merged and span_start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], span_end))
        else:
            merged.append((span_start, span_end))
    return merged
