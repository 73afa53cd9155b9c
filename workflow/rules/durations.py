"""Durations as written in the config and in staff commands: ``30s``, ``45m``, ``5h``,
``1h30m``, ``2d``.

``d`` is kept apart from the clock units because on a business calendar a day is
"the same position in the business day N open days later", not 24 hours. On an
always-open calendar one day is 24 hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

_PART = re.compile(r"(\d+)\s*([dhms])", re.IGNORECASE)
_WHOLE = re.compile(r"^\s*(?:\d+\s*[dhms]\s*)+$", re.IGNORECASE)
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}


class DurationError(ValueError):
    """A duration string that does not follow the ``1h30m`` grammar."""


@dataclass(frozen=True, order=True)
class Duration:
    days: int = 0
    seconds: int = 0

    @property
    def clock(self) -> timedelta:
        """The hours/minutes/seconds part, without business days."""
        return timedelta(seconds=self.seconds)

    def as_timedelta(self) -> timedelta:
        """Wall-clock length, counting a day as 24 hours (for always-open calendars
        and for settings such as ``scan_interval``)."""
        return timedelta(days=self.days, seconds=self.seconds)

    def __bool__(self) -> bool:
        return bool(self.days or self.seconds)

    def __str__(self) -> str:
        parts = []
        if self.days:
            parts.append(f"{self.days}d")
        hours, rest = divmod(self.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        if hours:
            parts.append(f"{hours}h")
        if minutes:
            parts.append(f"{minutes}m")
        if seconds:
            parts.append(f"{seconds}s")
        return "".join(parts) or "0s"


def parse_duration(text: str) -> Duration:
    """Parse ``1h30m``-style text. Raises DurationError naming what was wrong."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise DurationError(f"not a duration: {text!r} (use e.g. 30s, 45m, 5h, 1h30m, 2d)")
    days = 0
    seconds = 0
    for amount, unit in _PART.findall(text):
        unit = unit.lower()
        if unit == "d":
            days += int(amount)
        else:
            seconds += int(amount) * _UNIT_SECONDS[unit]
    return Duration(days=days, seconds=seconds)
