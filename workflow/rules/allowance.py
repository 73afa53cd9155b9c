"""Monthly support-hour allowance with rollover.

Pure rules: no I/O, no clock. Months are calendar months in the org's local time
(``month_of``), written ``(year, month)``.

Each month of the contract gets the plan's ``monthly_allowance``. At the end of a month:

* unused time (remaining > 0) rolls into the next month, up to ``rollover_cap``
  (``None``: no cap; zero: nothing rolls over). What the cap cuts off is *forfeited*;
* overuse (remaining < 0) is carried into the next month in full, as a negative
  rollover: the cap limits a gift, not a debt.

So for every month ``remaining = allowance + rollover_in - used`` and
``rollover_in`` of a month is ``rollover_out`` of the month before (zero for the first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = ["MonthBalance", "YearMonth", "month_balances", "month_of", "would_exceed"]

YearMonth = tuple[int, int]

_ZERO = timedelta(0)


@dataclass(frozen=True)
class MonthBalance:
    year: int
    month: int
    allowance: timedelta
    # Carried in from the month before: positive (unused, capped) or negative (overuse).
    rollover_in: timedelta
    used: timedelta
    # allowance + rollover_in - used; negative when the month is over its allowance.
    remaining: timedelta
    # What the next month starts with as its rollover_in.
    rollover_out: timedelta
    # Overuse passed on to the next month (>= 0); equals -rollover_out when > 0.
    overuse_carried: timedelta
    # Unused time the rollover cap cut off at the end of this month (>= 0).
    forfeited: timedelta

    @property
    def year_month(self) -> YearMonth:
        return (self.year, self.month)


def _check_year_month(name: str, value: YearMonth) -> None:
    year, month = value
    if not 1 <= month <= 12:
        raise ValueError(f"{name}: month must be 1..12, got {month}")
    if year < 1:
        raise ValueError(f"{name}: year must be positive, got {year}")


def _next_month(value: YearMonth) -> YearMonth:
    year, month = value
    return (year + 1, 1) if month == 12 else (year, month + 1)


def month_balances(
    *,
    monthly_allowance: timedelta,
    rollover_cap: timedelta | None,
    usage_by_month: Mapping[YearMonth, timedelta],
    first_month: YearMonth,
    through_month: YearMonth,
) -> list[MonthBalance]:
    """One balance per month from ``first_month`` through ``through_month``, inclusive.

    ``first_month`` is where the allowance starts (nothing rolls in). Usage recorded for
    months outside the window is ignored, so a caller may pass all of an org's usage and
    ask for the balance up to the current month; a month with no entry used nothing.
    """
    _check_year_month("first_month", first_month)
    _check_year_month("through_month", through_month)
    if through_month < first_month:
        raise ValueError(f"through_month {through_month} is before first_month {first_month}")
    if monthly_allowance < _ZERO:
        raise ValueError("monthly_allowance must not be negative")
    if rollover_cap is not None and rollover_cap < _ZERO:
        raise ValueError("rollover_cap must not be negative (use None for no cap)")
    for key, used in usage_by_month.items():
        if used < _ZERO:
            raise ValueError(f"usage for {key} is negative: {used}")

    balances: list[MonthBalance] = []
    rollover_in = _ZERO
    current = first_month
    while current <= through_month:
        used = usage_by_month.get(current, _ZERO)
        remaining = monthly_allowance + rollover_in - used
        forfeited = _ZERO
        overuse_carried = _ZERO
        if remaining > _ZERO:
            rollover_out = remaining if rollover_cap is None else min(remaining, rollover_cap)
            forfeited = remaining - rollover_out
        else:
            rollover_out = remaining
            overuse_carried = -remaining
        balances.append(
            MonthBalance(
                year=current[0],
                month=current[1],
                allowance=monthly_allowance,
                rollover_in=rollover_in,
                used=used,
                remaining=remaining,
                rollover_out=rollover_out,
                overuse_carried=overuse_carried,
                forfeited=forfeited,
            )
        )
        rollover_in = rollover_out
        current = _next_month(current)
    return balances


def would_exceed(balance: MonthBalance, additional: timedelta) -> bool:
    """True if using ``additional`` more time this month leaves the balance below zero.

    Using exactly what remains does not exceed; a month already over its allowance is
    exceeded by any further use (and by zero, since it stays below zero).
    """
    if additional < _ZERO:
        raise ValueError("additional time must not be negative")
    return balance.remaining - additional < _ZERO


def month_of(at: datetime, tz: ZoneInfo) -> YearMonth:
    """The org's local calendar month containing the instant ``at``.

    Local, because a client in Sydney working on the morning of 1 December is using
    December's hours even though it is still November in UTC.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("month_of needs a timezone-aware datetime")
    local = at.astimezone(tz)
    return (local.year, local.month)


def format_hours(value: timedelta) -> str:
    """``5h 30m`` / ``-1h 15m``: how emails show support hours."""
    total = int(value.total_seconds() // 60)
    sign = "-" if total < 0 else ""
    h, m = divmod(abs(total), 60)
    return f"{sign}{h}h {m:02d}m"
