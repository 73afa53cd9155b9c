"""Monthly support-hour allowance with rollover: workflow.allowance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postdesk.workflow.rules.allowance import MonthBalance, month_balances, month_of, would_exceed

H = timedelta(hours=1)
M = timedelta(minutes=1)
ZERO = timedelta(0)


def balance(
    year: int,
    month: int,
    *,
    allowance: timedelta,
    rollover_in: timedelta,
    used: timedelta,
    remaining: timedelta,
    rollover_out: timedelta,
    overuse_carried: timedelta = ZERO,
    forfeited: timedelta = ZERO,
) -> MonthBalance:
    return MonthBalance(
        year=year,
        month=month,
        allowance=allowance,
        rollover_in=rollover_in,
        used=used,
        remaining=remaining,
        rollover_out=rollover_out,
        overuse_carried=overuse_carried,
        forfeited=forfeited,
    )


def test_base_plan_rollover_cap_and_overuse_over_a_year_end() -> None:
    # 2h a month, rollover capped at 4h (the "base" plan of docs/reference.md).
    balances = month_balances(
        monthly_allowance=2 * H,
        rollover_cap=4 * H,
        usage_by_month={(2026, 10): 30 * M, (2026, 12): 7 * H},
        first_month=(2026, 9),
        through_month=(2027, 1),
    )
    assert balances == [
        # Sep: nothing used, 2h rolls over.
        balance(2026, 9, allowance=2 * H, rollover_in=ZERO, used=ZERO,
                remaining=2 * H, rollover_out=2 * H),
        # Oct: 2h + 2h - 30m = 3h30, under the cap, all of it rolls over.
        balance(2026, 10, allowance=2 * H, rollover_in=2 * H, used=30 * M,
                remaining=3 * H + 30 * M, rollover_out=3 * H + 30 * M),
        # Nov: 2h + 3h30 = 5h30; the cap keeps 4h and 1h30 is forfeited.
        balance(2026, 11, allowance=2 * H, rollover_in=3 * H + 30 * M, used=ZERO,
                remaining=5 * H + 30 * M, rollover_out=4 * H, forfeited=H + 30 * M),
        # Dec: 2h + 4h - 7h = -1h, carried as a debt.
        balance(2026, 12, allowance=2 * H, rollover_in=4 * H, used=7 * H,
                remaining=-H, rollover_out=-H, overuse_carried=H),
        # Jan: 2h - 1h = 1h.
        balance(2027, 1, allowance=2 * H, rollover_in=-H, used=ZERO,
                remaining=H, rollover_out=H),
    ]  # fmt: skip
    assert [b.year_month for b in balances] == [
        (2026, 9),
        (2026, 10),
        (2026, 11),
        (2026, 12),
        (2027, 1),
    ]


def test_no_cap_rolls_everything_over() -> None:
    balances = month_balances(
        monthly_allowance=2 * H,
        rollover_cap=None,
        usage_by_month={(2026, 2): 45 * M},
        first_month=(2026, 1),
        through_month=(2026, 4),
    )
    assert [(b.rollover_in, b.remaining, b.rollover_out, b.forfeited) for b in balances] == [
        (ZERO, 2 * H, 2 * H, ZERO),
        (2 * H, 3 * H + 15 * M, 3 * H + 15 * M, ZERO),
        (3 * H + 15 * M, 5 * H + 15 * M, 5 * H + 15 * M, ZERO),
        (5 * H + 15 * M, 7 * H + 15 * M, 7 * H + 15 * M, ZERO),
    ]


def test_zero_cap_means_no_rollover_but_overuse_still_carries() -> None:
    balances = month_balances(
        monthly_allowance=2 * H,
        rollover_cap=ZERO,
        usage_by_month={(2026, 1): 30 * M, (2026, 2): 3 * H},
        first_month=(2026, 1),
        through_month=(2026, 4),
    )
    assert balances == [
        balance(2026, 1, allowance=2 * H, rollover_in=ZERO, used=30 * M,
                remaining=H + 30 * M, rollover_out=ZERO, forfeited=H + 30 * M),
        balance(2026, 2, allowance=2 * H, rollover_in=ZERO, used=3 * H,
                remaining=-H, rollover_out=-H, overuse_carried=H),
        balance(2026, 3, allowance=2 * H, rollover_in=-H, used=ZERO,
                remaining=H, rollover_out=ZERO, forfeited=H),
        balance(2026, 4, allowance=2 * H, rollover_in=ZERO, used=ZERO,
                remaining=2 * H, rollover_out=ZERO, forfeited=2 * H),
    ]  # fmt: skip


def test_overuse_is_not_limited_by_the_cap() -> None:
    balances = month_balances(
        monthly_allowance=2 * H,
        rollover_cap=H,
        usage_by_month={(2026, 5): 7 * H},
        first_month=(2026, 5),
        through_month=(2026, 8),
    )
    assert [(b.remaining, b.rollover_out, b.overuse_carried, b.forfeited) for b in balances] == [
        (-5 * H, -5 * H, 5 * H, ZERO),  # 2h - 7h; the 1h cap does not shrink a debt
        (-3 * H, -3 * H, 3 * H, ZERO),
        (-H, -H, H, ZERO),
        (H, H, ZERO, ZERO),
    ]


def test_exactly_used_up_carries_nothing() -> None:
    [only] = month_balances(
        monthly_allowance=2 * H,
        rollover_cap=4 * H,
        usage_by_month={(2026, 6): 2 * H},
        first_month=(2026, 6),
        through_month=(2026, 6),
    )
    assert only == balance(
        2026, 6, allowance=2 * H, rollover_in=ZERO, used=2 * H, remaining=ZERO, rollover_out=ZERO
    )


def test_zero_allowance_debt_persists() -> None:
    balances = month_balances(
        monthly_allowance=ZERO,
        rollover_cap=None,
        usage_by_month={(2026, 11): 90 * M},
        first_month=(2026, 11),
        through_month=(2027, 1),
    )
    assert [(b.year, b.month, b.remaining, b.overuse_carried) for b in balances] == [
        (2026, 11, -90 * M, 90 * M),
        (2026, 12, -90 * M, 90 * M),
        (2027, 1, -90 * M, 90 * M),
    ]
    assert would_exceed(balances[-1], ZERO)


def test_zero_allowance_and_no_use() -> None:
    balances = month_balances(
        monthly_allowance=ZERO,
        rollover_cap=H,
        usage_by_month={},
        first_month=(2026, 1),
        through_month=(2026, 2),
    )
    assert balances == [
        balance(2026, 1, allowance=ZERO, rollover_in=ZERO, used=ZERO, remaining=ZERO,
                rollover_out=ZERO),
        balance(2026, 2, allowance=ZERO, rollover_in=ZERO, used=ZERO, remaining=ZERO,
                rollover_out=ZERO),
    ]  # fmt: skip


def test_enterprise_plan_cap_hit_after_two_quiet_months() -> None:
    # 30h a month, cap 60h: 30 + 30 = 60 fits; the third quiet month loses 30h.
    balances = month_balances(
        monthly_allowance=30 * H,
        rollover_cap=60 * H,
        usage_by_month={(2026, 4): 95 * H},
        first_month=(2026, 1),
        through_month=(2026, 4),
    )
    assert [(b.rollover_in, b.remaining, b.rollover_out, b.forfeited) for b in balances] == [
        (ZERO, 30 * H, 30 * H, ZERO),
        (30 * H, 60 * H, 60 * H, ZERO),
        (60 * H, 90 * H, 60 * H, 30 * H),
        (60 * H, -5 * H, -5 * H, ZERO),  # 30 + 60 - 95
    ]
    assert balances[-1].overuse_carried == 5 * H


def test_usage_outside_the_window_is_ignored() -> None:
    balances = month_balances(
        monthly_allowance=2 * H,
        rollover_cap=None,
        usage_by_month={(2026, 8): 50 * H, (2026, 9): H, (2026, 11): 50 * H},
        first_month=(2026, 9),
        through_month=(2026, 10),
    )
    assert [(b.month, b.used, b.remaining) for b in balances] == [(9, H, H), (10, ZERO, 3 * H)]


def test_single_month_window() -> None:
    balances = month_balances(
        monthly_allowance=2 * H,
        rollover_cap=None,
        usage_by_month={},
        first_month=(2026, 12),
        through_month=(2026, 12),
    )
    assert len(balances) == 1
    assert balances[0].year_month == (2026, 12)


def test_window_length_across_years() -> None:
    balances = month_balances(
        monthly_allowance=H,
        rollover_cap=None,
        usage_by_month={},
        first_month=(2025, 11),
        through_month=(2027, 2),
    )
    assert len(balances) == 16
    assert balances[1].year_month == (2025, 12)
    assert balances[2].year_month == (2026, 1)
    assert balances[-1].year_month == (2027, 2)
    assert balances[-1].remaining == 16 * H


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first_month": (2026, 5), "through_month": (2026, 4)}, "before first_month"),
        ({"first_month": (2026, 13)}, "first_month: month must be 1..12"),
        ({"through_month": (2026, 0)}, "through_month: month must be 1..12"),
        ({"first_month": (0, 1)}, "first_month: year must be positive"),
        ({"monthly_allowance": -M}, "monthly_allowance must not be negative"),
        ({"rollover_cap": -M}, "rollover_cap must not be negative"),
        ({"usage_by_month": {(2026, 1): -M}}, r"usage for \(2026, 1\) is negative"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "monthly_allowance": 2 * H,
        "rollover_cap": 4 * H,
        "usage_by_month": {},
        "first_month": (2026, 1),
        "through_month": (2026, 3),
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        month_balances(**arguments)  # type: ignore[arg-type]


# --- would_exceed ----------------------------------------------------------------------


def with_remaining(remaining: timedelta) -> MonthBalance:
    return balance(
        2026, 11, allowance=2 * H, rollover_in=ZERO, used=2 * H - remaining,
        remaining=remaining, rollover_out=remaining,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("remaining", "additional", "exceeds"),
    [
        (H, 59 * M, False),
        (H, H, False),  # using exactly what is left is fine
        (H, H + timedelta(seconds=1), True),
        (H, ZERO, False),
        (ZERO, ZERO, False),
        (ZERO, timedelta(seconds=1), True),
        (-H, ZERO, True),  # already over
        (-H, M, True),
    ],
)
def test_would_exceed(remaining: timedelta, additional: timedelta, exceeds: bool) -> None:
    assert would_exceed(with_remaining(remaining), additional) is exceeds


def test_would_exceed_rejects_negative_time() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        would_exceed(with_remaining(H), -M)


# --- month_of --------------------------------------------------------------------------

LONDON = ZoneInfo("Europe/London")
SYDNEY = ZoneInfo("Australia/Sydney")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("at", "tz", "expected"),
    [
        (datetime(2026, 11, 30, 23, 30, tzinfo=UTC), LONDON, (2026, 11)),  # GMT: same
        (datetime(2026, 6, 30, 23, 30, tzinfo=UTC), LONDON, (2026, 7)),  # 00:30 BST 1 Jul
        (datetime(2026, 11, 30, 14, 0, tzinfo=UTC), SYDNEY, (2026, 12)),  # 01:00 AEDT 1 Dec
        (datetime(2026, 11, 30, 12, 59, tzinfo=UTC), SYDNEY, (2026, 11)),  # 23:59 AEDT
        (datetime(2027, 1, 1, 3, 0, tzinfo=UTC), NEW_YORK, (2026, 12)),  # 22:00 EST 31 Dec
        (datetime(2027, 1, 1, 5, 0, tzinfo=UTC), NEW_YORK, (2027, 1)),  # midnight EST
        # An aware time in another zone: 20:00 in New York on 31 Jan is 01:00 GMT 1 Feb.
        (datetime(2026, 1, 31, 20, 0, tzinfo=NEW_YORK), LONDON, (2026, 2)),
    ],
)
def test_month_of_is_the_local_month(at: datetime, tz: ZoneInfo, expected: tuple[int, int]) -> None:
    assert month_of(at, tz) == expected


def test_month_of_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        month_of(datetime(2026, 11, 30, 12, 0), LONDON)


# --- properties ------------------------------------------------------------------------

_MINUTES = st.integers(min_value=0, max_value=20 * 60)


@dataclass(frozen=True)
class AllowanceCase:
    monthly_allowance: timedelta
    rollover_cap: timedelta | None
    usage_by_month: dict[tuple[int, int], timedelta]
    window: list[tuple[int, int]]

    def balances(self, rollover_cap: timedelta | None = None) -> list[MonthBalance]:
        return month_balances(
            monthly_allowance=self.monthly_allowance,
            rollover_cap=rollover_cap,
            usage_by_month=self.usage_by_month,
            first_month=self.window[0],
            through_month=self.window[-1],
        )


@st.composite
def allowance_cases(draw: st.DrawFn) -> AllowanceCase:
    months = draw(st.integers(min_value=1, max_value=30))
    year = draw(st.integers(min_value=2020, max_value=2030))
    month = draw(st.integers(min_value=1, max_value=12))
    window = []
    for _ in range(months):
        window.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return AllowanceCase(
        monthly_allowance=draw(st.integers(min_value=0, max_value=10 * 60)) * M,
        rollover_cap=draw(st.none() | _MINUTES.map(lambda minutes: minutes * M)),
        usage_by_month={key: draw(_MINUTES) * M for key in window if draw(st.booleans())},
        window=window,
    )


@given(allowance_cases())
def test_balances_are_consistent(case: AllowanceCase) -> None:
    cap = case.rollover_cap
    balances = case.balances(cap)

    assert [b.year_month for b in balances] == case.window
    assert balances[0].rollover_in == ZERO
    for before, after in pairwise(balances):
        assert after.rollover_in == before.rollover_out
    for b in balances:
        assert b.allowance == case.monthly_allowance
        assert b.used == case.usage_by_month.get(b.year_month, ZERO)
        assert b.remaining == b.allowance + b.rollover_in - b.used
        assert b.forfeited >= ZERO and b.overuse_carried >= ZERO
        if b.remaining > ZERO:
            assert b.rollover_out == (b.remaining if cap is None else min(b.remaining, cap))
            assert b.forfeited == b.remaining - b.rollover_out
            assert b.overuse_carried == ZERO
        else:
            assert b.rollover_out == b.remaining
            assert b.overuse_carried == -b.remaining
            assert b.forfeited == ZERO

    # Nothing is created or lost except what the cap cut off at the end of a month that
    # has a successor: the last month's remaining is still all there.
    total_allowance = case.monthly_allowance * len(balances)
    total_used = sum((b.used for b in balances), ZERO)
    lost_to_cap = sum((b.forfeited for b in balances[:-1]), ZERO)
    assert balances[-1].remaining == total_allowance - total_used - lost_to_cap
    if cap is None:
        assert lost_to_cap == ZERO


@given(allowance_cases(), _MINUTES, _MINUTES)
def test_a_larger_cap_never_leaves_less(case: AllowanceCase, a: int, b: int) -> None:
    smaller, larger = sorted((a * M, b * M))
    remaining = [case.balances(cap)[-1].remaining for cap in (smaller, larger, None)]
    assert remaining[0] <= remaining[1] <= remaining[2]
