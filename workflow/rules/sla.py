"""SLA rules of a plan, pure: which targets apply at a priority, on which calendar, and
when each is due or at risk given the business time already spent paused.

Targets: ``first_response``, ``next_update`` (longest gap allowed between public
updates), ``resolution``; any may be absent (best effort)."""

from __future__ import annotations

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


def due_at(calendar: BusinessCalendar, start: datetime, target: Duration,
           paused: timedelta = timedelta(0)) -> datetime:
    """Due instant: the target's business time after ``start``, pushed back by the
    business time the clock spent paused."""
    return calendar.add(start, Duration(days=target.days,
                                        seconds=target.seconds + int(paused.total_seconds())))


def risk_at(calendar: BusinessCalendar, start: datetime, due: datetime, share: float
            ) -> datetime:
    """When ``share`` of the business time between start and due has elapsed (works for
    day targets too, whose business length depends on the days crossed)."""
    total = calendar.elapsed(start, due)
    return calendar.add(start, Duration(seconds=int(total.total_seconds() * share)))
