"""Pure figures for the reports people read (manager digest, client statement).

No I/O and no wall clock: the callers hand in instants, durations and ``now``.

* Compliance: a clock is *met* iff it stopped at or before its due instant, *missed* iff it
  stopped after it or is still running past it; a running clock not yet due is *open* and
  not counted. Breach alert rows are the alert record, not the measure: a reply 5 s late
  is a miss whether or not a scan ran in between.
* Bars: a percentage as cell widths and a colour by threshold, so an email table can draw
  it without images or CSS that mail clients drop.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Outcome = Literal["met", "missed", "open"]

# Thresholds of the compliance bars, shared by the HTML and the tests that read pixels.
GOOD_PERCENT = 95.0
FAIR_PERCENT = 80.0
GOOD_COLOUR = "#2e7d32"     # green
FAIR_COLOUR = "#f9a825"     # amber
POOR_COLOUR = "#c62828"     # red
TRACK_COLOUR = "#e0e0e0"    # the empty part of a bar
OVER_COLOUR = POOR_COLOUR   # allowance used beyond what the month had

BAR_WIDTH = 200             # pixels of a whole bar


def clock_outcome(due_at: datetime, stopped_at: datetime | None, now: datetime) -> Outcome:
    """Met iff stopped on or before due; missed iff stopped after due, or running past
    due at ``now``; otherwise still open."""
    if stopped_at is not None:
        return "met" if stopped_at <= due_at else "missed"
    return "missed" if now > due_at else "open"


def percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def median(values: Sequence[timedelta]) -> timedelta | None:
    """The median of durations (mean of the middle two for an even count); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def threshold_colour(value: float | None) -> str:
    """Green at or above 95 %, amber at or above 80 %, red below."""
    if value is None:
        return TRACK_COLOUR
    if value >= GOOD_PERCENT:
        return GOOD_COLOUR
    if value >= FAIR_PERCENT:
        return FAIR_COLOUR
    return POOR_COLOUR


@dataclass(frozen=True)
class Bar:
    """A horizontal bar as table cells: ``filled`` px in ``colour``, then ``empty`` px of
    track. Widths are whole pixels and always add up to ``BAR_WIDTH``."""

    filled: int
    empty: int
    colour: str


def compliance_bar(value: float | None, width: int = BAR_WIDTH) -> Bar:
    filled = 0 if value is None else round(width * max(0.0, min(value, 100.0)) / 100)
    return Bar(filled=filled, empty=width - filled, colour=threshold_colour(value))


def allowance_bar(used: timedelta, available: timedelta, width: int = BAR_WIDTH) -> Bar:
    """Used against what the month had (allowance + rollover in): blue while inside it,
    red when over (then the bar is full)."""
    if available <= timedelta(0):
        share = 1.0 if used > timedelta(0) else 0.0
    else:
        share = min(used / available, 1.0)
    filled = round(width * share)
    over = used > available
    return Bar(filled=filled, empty=width - filled, colour=OVER_COLOUR if over else "#1565c0")


def format_duration(value: timedelta | None) -> str:
    """``2h 05m``, ``45m``, ``3d 4h`` (whole days of 24 h), ``-`` for none: how lateness,
    time left and median response read in a report."""
    if value is None:
        return "-"
    total = int(value.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m"
    return f"{sign}{seconds}s"


def relative(at: datetime, now: datetime) -> str:
    """``in 2h 05m`` / ``3d 4h ago``: a due instant relative to now."""
    delta = at - now
    if delta >= timedelta(0):
        return f"in {format_duration(delta)}"
    return f"{format_duration(-delta)} ago"


def previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def month_range(year: int, month: int, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The instants [start, end) of a calendar month in zone ``tz``, in UTC."""
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def parse_month(value: str) -> tuple[int, int]:
    """``2026-11`` -> (2026, 11); ValueError names what is wrong."""
    try:
        year, month = (int(part) for part in value.split("-"))
    except ValueError:
        raise ValueError(f"not a month like 2026-11: {value!r}") from None
    if not 1 <= month <= 12 or year < 1:
        raise ValueError(f"not a month like 2026-11: {value!r}")
    return year, month


STATEMENT_CSV_FIELDS = ("org", "month", "ticket", "subject", "priority", "status",
                        "opened", "resolved", "minutes", "hours")


def statement_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """The statement's CSV: one row per ticket, ``minutes`` and ``hours`` (2 decimals)
    of time logged that month; no total row, so a column sum is the total."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=STATEMENT_CSV_FIELDS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
