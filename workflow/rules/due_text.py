"""How a due instant is shown to staff: the local time in their zone and how long is
left (or how long it is overdue). Pure: the caller passes ``now``."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo


def local_time(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%a %d %b %Y %H:%M %Z")


def due_phrase(now: datetime, due: datetime) -> str:
    """``in 2h 15m`` / ``overdue by 1d 3h`` (wall-clock time, as a person reads it)."""
    seconds = int((due - now).total_seconds())
    span = _span(abs(seconds))
    return f"in {span}" if seconds >= 0 else f"overdue by {span}"


def _span(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"
