"""Support hours in words, for the people who are promised them: "Mon-Fri 08:00-18:00
(Europe/London), closed on public holidays (GB-ENG)" or "24 hours a day, every day"."""

from __future__ import annotations

from postdesk.workflow.rules.calendar import WEEKDAYS, parse_day_hours
from postdesk.workflow.rules.config import CalendarConfig

_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# Described once per calendar (every acknowledgement names its support hours). Keyed by
# the object, which is kept with its text so that its id is not reused while cached;
# calendars are few and live as long as their config.
_DESCRIBED: dict[int, tuple[CalendarConfig, str]] = {}


def describe_hours(cal: CalendarConfig) -> str:
    known = _DESCRIBED.get(id(cal))
    if known is not None and known[0] is cal:
        return known[1]
    text = _describe(cal)
    if len(_DESCRIBED) >= 64:   # configs loaded again and again (tests): start afresh
        _DESCRIBED.clear()
    _DESCRIBED[id(cal)] = (cal, text)
    return text


def _describe(cal: CalendarConfig) -> str:
    if cal.always_open:
        return "24 hours a day, every day"
    spans: list[tuple[int, int, str]] = []   # first day, last day, ranges text
    for i, key in enumerate(WEEKDAYS):
        spec = cal.hours.get(key)
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
    out = f"{days} ({cal.timezone} time)"
    if cal.holidays:
        region = "-".join(v for v in (cal.holidays.get("country"),
                                      cal.holidays.get("subdiv")) if v)
        out += f", closed on public holidays ({region})"
    return out

