"""Support hours in words, for the people who are promised them: "Mon-Fri 08:00-18:00
(Europe/London), closed on public holidays (GB-ENG)" or "24 hours a day, every day"."""

from __future__ import annotations

from functools import lru_cache

from postdesk.workflow.rules.calendar import WEEKDAYS, parse_day_hours
from postdesk.workflow.rules.config import CalendarConfig

_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def describe_hours(cal: CalendarConfig) -> str:
    # Every acknowledgement names its support hours: described once per distinct
    # calendar (the values it is described from, which are hashable where the model is
    # not).
    return _describe(cal.always_open, tuple(cal.hours.get(key) for key in WEEKDAYS),
                     cal.timezone, tuple((cal.holidays or {}).items()))


@lru_cache(maxsize=64)
def _describe(always_open: bool, hours: tuple[str | None, ...], timezone: str,
              holidays: tuple[tuple[str, str], ...]) -> str:
    if always_open:
        return "24 hours a day, every day"
    spans: list[tuple[int, int, str]] = []   # first day, last day, ranges text
    for i, (key, spec) in enumerate(zip(WEEKDAYS, hours, strict=True)):
        ranges = parse_day_hours(key, spec) if spec is not None else ()
        text = ", ".join(f"{_hhmm(s)}-{_hhmm(e)}" for s, e in ranges)
        if not text:
            continue
        if spans and spans[-1][1] == i - 1 and spans[-1][2] == text:
            spans[-1] = (spans[-1][0], i, text)
        else:
            spans.append((i, i, text))
    if not spans:
        return "by arrangement"
    days = "; ".join(
        f"{_NAMES[a]}{'-' + _NAMES[b] if b > a else ''} {text}" for a, b, text in spans)
    out = f"{days} ({timezone} time)"
    if holidays:
        named = dict(holidays)
        region = "-".join(v for v in (named.get("country"), named.get("subdiv")) if v)
        out += f", closed on public holidays ({region})"
    return out

