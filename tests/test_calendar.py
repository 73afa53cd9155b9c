"""Business-time arithmetic (workflow/calendar.py).

Expected values are worked out by hand in the comments next to them. London is on GMT
(UTC+0) until 01:00 UTC on Sun 29 Mar 2026, BST (UTC+1) until 01:00 UTC on Sun 25 Oct
2026, GMT until 01:00 UTC on Sun 28 Mar 2027.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postdesk.workflow.rules import calendar as calendar_module
from postdesk.workflow.rules.calendar import BusinessCalendar, CalendarError
from postdesk.workflow.rules.durations import Duration, parse_duration
from tests.support import examples

LONDON = ZoneInfo("Europe/London")
WEEKDAYS_8_18 = {day: "08:00-18:00" for day in ("mon", "tue", "wed", "thu", "fri")}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def london(*args: int) -> datetime:
    return datetime(*args, tzinfo=LONDON)


def d(text: str) -> Duration:
    return parse_duration(text)


def uk_office() -> BusinessCalendar:
    return BusinessCalendar(
        timezone="Europe/London",
        hours=WEEKDAYS_8_18,
        holidays_country="GB",
        holidays_subdiv="ENG",
        closed=[date(2026, 12, 24)],
    )


def two_ranges() -> BusinessCalendar:
    return BusinessCalendar(
        timezone="Europe/London",
        hours={day: "08:00-12:00,13:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")},
    )


UK = uk_office()
LUNCH = two_ranges()
ALWAYS = BusinessCalendar.always()
ALWAYS_LONDON = BusinessCalendar(timezone="Europe/London", always_open=True)


# --------------------------------------------------------------------------- clock targets


@pytest.mark.parametrize(
    ("start", "target", "due"),
    [
        # Fri 17:00 GMT: 1h on Friday, 4h on Monday from 08:00 → Mon 12:00 GMT.
        (utc(2026, 1, 9, 17), "5h", utc(2026, 1, 12, 12)),
        # Same in summer: Fri 17:00 BST = 16:00 UTC → Mon 12:00 BST = 11:00 UTC.
        (london(2026, 6, 5, 17), "5h", utc(2026, 6, 8, 11)),
        # Tue 19:30, after hours: counting starts Wed 08:00 → 09:00.
        (utc(2026, 1, 13, 19, 30), "1h", utc(2026, 1, 14, 9)),
        # 16:55 + 1h fits before 18:00.
        (utc(2026, 1, 13, 16, 55), "1h", utc(2026, 1, 13, 17, 55)),
        # 16:55 + 2h: 1h05m today, the other 55m from Wed 08:00 → 08:55.
        (utc(2026, 1, 13, 16, 55), "2h", utc(2026, 1, 14, 8, 55)),
        # Exactly the rest of the day lands on the closing time, not the next opening.
        (utc(2026, 1, 12, 16), "2h", utc(2026, 1, 12, 18)),
        # Sat 10:00: nothing counts until Mon 08:00 → 09:30.
        (utc(2026, 1, 10, 10), "1h30m", utc(2026, 1, 12, 9, 30)),
        # Mon 07:00, before opening → 08:00 + 45m.
        (utc(2026, 1, 12, 7), "45m", utc(2026, 1, 12, 8, 45)),
        # 25h from Mon 09:00: Mon 9h, Tue 10h, Wed 6h → Wed 14:00.
        (utc(2026, 1, 12, 9), "25h", utc(2026, 1, 14, 14)),
    ],
)
def test_add_clock_time_uk(start: datetime, target: str, due: datetime) -> None:
    assert UK.add(start, d(target)) == due


def test_add_returns_utc_whatever_the_input_zone() -> None:
    result = UK.add(london(2026, 6, 8, 9), d("1h"))  # 09:00 BST = 08:00 UTC
    assert result == utc(2026, 6, 8, 9)
    assert result.tzinfo is UTC
    assert result.hour == 9


def test_adding_zero_returns_start_even_when_closed() -> None:
    saturday = utc(2026, 1, 10, 10)
    assert UK.add(saturday, Duration()) == saturday
    assert UK.add(saturday, d("0s")) == saturday


def test_negative_duration_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        UK.add(utc(2026, 1, 12, 9), Duration(seconds=-1))


# --------------------------------------------------------------------------- holidays


def test_holidays_package_gives_the_england_dates_we_rely_on() -> None:
    found = holidays.country_holidays("GB", subdiv="ENG", years=[2026, 2027])
    for day in (
        date(2026, 12, 25),  # Christmas Day, Friday
        date(2026, 12, 28),  # Boxing Day falls on Saturday: substitute Monday 28th
        date(2027, 1, 1),  # New Year's Day, Friday
        date(2027, 3, 26),  # Good Friday
        date(2027, 3, 29),  # Easter Monday
    ):
        assert day in found, day
    assert date(2026, 12, 24) not in found  # closed only by our own `closed` list


@pytest.mark.parametrize(
    "closed_day",
    [
        date(2026, 12, 24),
        date(2026, 12, 25),
        date(2026, 12, 28),
        date(2027, 1, 1),
        date(2027, 3, 26),
        date(2027, 3, 29),
    ],
)
def test_holidays_and_closed_dates_are_closed_all_day(closed_day: date) -> None:
    assert closed_day.weekday() < 5  # a weekday, so only the holiday closes it
    noon = datetime(closed_day.year, closed_day.month, closed_day.day, 12, tzinfo=LONDON)
    assert not UK.is_open(noon)
    assert list(UK.open_intervals(noon - timedelta(hours=12), noon + timedelta(hours=12))) == []
    # The same weekday two weeks earlier is an ordinary 10h day (so the closure is real).
    week_before = noon - timedelta(days=14)
    assert UK.elapsed(week_before - timedelta(hours=12), week_before + timedelta(hours=12)) == (
        timedelta(hours=10)
    )


@pytest.mark.parametrize(
    ("start", "target", "due"),
    [
        # Wed 23 Dec 17:00: 1h on Wed; Thu 24 (closed), Fri 25 (Christmas), weekend,
        # Mon 28 (Boxing Day substitute) closed; 4h on Tue 29 → 12:00 GMT.
        (utc(2026, 12, 23, 17), "5h", utc(2026, 12, 29, 12)),
        # Thu 31 Dec 17:00: 1h; Fri 1 Jan closed, weekend; 1h on Mon 4 Jan → 09:00.
        (utc(2026, 12, 31, 17), "2h", utc(2027, 1, 4, 9)),
        # Thu 25 Mar 2027 17:00 GMT: 1h; Good Friday, weekend (BST from Sunday), Easter
        # Monday closed; 2h on Tue 30 Mar from 08:00 BST → 10:00 BST = 09:00 UTC.
        (utc(2027, 3, 25, 17), "3h", utc(2027, 3, 30, 9)),
        # Tue 22 Dec 2026 12:00 + 20h: 6h Tue, 10h Wed, then Tue 29 Dec 4h → 12:00.
        (utc(2026, 12, 22, 12), "20h", utc(2026, 12, 29, 12)),
    ],
)
def test_add_across_holidays(start: datetime, target: str, due: datetime) -> None:
    assert UK.add(start, d(target)) == due


def test_holidays_loaded_lazily_once_per_year(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = holidays.country_holidays

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("years"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(calendar_module.holidays, "country_holidays", counting)
    cal = uk_office()
    calls.clear()  # construction validates the country with years=[]
    assert cal.add(utc(2026, 12, 23, 17), d("5h")) == utc(2026, 12, 29, 12)
    assert calls == [2026]
    assert cal.add(utc(2026, 12, 23, 17), d("5h")) == utc(2026, 12, 29, 12)
    assert cal.add(utc(2026, 12, 31, 17), d("2h")) == utc(2027, 1, 4, 9)
    assert calls == [2026, 2027]


# --------------------------------------------------------------------------- DST


@pytest.mark.parametrize(
    ("start", "target", "due"),
    [
        # Fri 27 Mar 2026 17:00 GMT: 1h Fri; Mon 30 Mar 08:00 BST (07:00 UTC) + 1h
        # → 09:00 BST = 08:00 UTC.
        (utc(2026, 3, 27, 17), "2h", utc(2026, 3, 30, 8)),
        # Fri 23 Oct 2026 17:00 BST = 16:00 UTC: 1h Fri; Mon 26 Oct 08:00 GMT + 1h → 09:00 UTC.
        (utc(2026, 10, 23, 16), "2h", utc(2026, 10, 26, 9)),
        # Fri 26 Mar 2027 is Good Friday: Thu 25 Mar 17:00 GMT + 2h → 1h Thu, Easter Monday
        # closed, Tue 30 Mar 09:00 BST = 08:00 UTC.
        (utc(2027, 3, 25, 17), "2h", utc(2027, 3, 30, 8)),
    ],
)
def test_add_across_dst_changes(start: datetime, target: str, due: datetime) -> None:
    assert UK.add(start, d(target)) == due


def test_elapsed_across_spring_change() -> None:
    # Fri 27 Mar 12:00 GMT → Mon 30 Mar 12:00 UTC (13:00 BST): 6h Fri + 08:00-13:00 BST Mon.
    assert UK.elapsed(utc(2026, 3, 27, 12), utc(2026, 3, 30, 12)) == timedelta(hours=11)


def test_always_open_counts_real_time_across_the_dst_night() -> None:
    # Sat 28 Mar 2026 23:00 UTC + 5h: London clocks skip 01:00→02:00, but 5 real hours
    # pass → 04:00 UTC (05:00 BST on the wall).
    for cal in (ALWAYS_LONDON, ALWAYS):
        assert cal.add(utc(2026, 3, 28, 23), d("5h")) == utc(2026, 3, 29, 4)
        assert cal.elapsed(utc(2026, 3, 28, 23), utc(2026, 3, 29, 4)) == timedelta(hours=5)


def test_round_the_clock_hours_count_real_time_across_dst() -> None:
    # Not `always_open`, but open 00:00-24:00 every day: the DST days are 23h and 25h long.
    cal = BusinessCalendar(
        timezone="Europe/London", hours={day: "00:00-24:00" for day in calendar_module.WEEKDAYS}
    )
    assert cal.add(utc(2026, 3, 28, 23), d("5h")) == utc(2026, 3, 29, 4)
    # Sun 29 Mar: 00:00 GMT → 00:00 BST next day = 00:00 → 23:00 UTC.
    assert cal.elapsed(utc(2026, 3, 29), utc(2026, 3, 30)) == timedelta(hours=24)
    assert cal.elapsed(london(2026, 3, 29), london(2026, 3, 30)) == timedelta(hours=23)
    # Sun 25 Oct: 00:00 BST (Sat 23:00 UTC) → 00:00 GMT Mon = 25h.
    assert cal.elapsed(london(2026, 10, 25), london(2026, 10, 26)) == timedelta(hours=25)
    # Day boundaries touch, so a week comes back as one interval.
    assert list(cal.open_intervals(utc(2026, 3, 27), utc(2026, 4, 3))) == [
        (utc(2026, 3, 27), utc(2026, 4, 3))
    ]
    # 1d keeps the position (business time into the day), not the wall-clock reading:
    # Sat 12:00 GMT is 12h in; Sunday starts 00:00 GMT, 12h in is 12:00 UTC = 13:00 BST.
    assert cal.add(utc(2026, 3, 28, 12), d("1d")) == utc(2026, 3, 29, 12)


def test_dst_jump_inside_opening_hours() -> None:
    cal = BusinessCalendar(timezone="Europe/London", hours={"sun": "00:30-10:30"})
    # 29 Mar 2026: 00:30 GMT (00:30 UTC) → 10:30 BST (09:30 UTC) = 9h.
    assert list(cal.open_intervals(utc(2026, 3, 28), utc(2026, 3, 30))) == [
        (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 9, 30))
    ]
    # 25 Oct 2026: 00:30 BST (Sat 23:30 UTC) → 10:30 GMT (10:30 UTC) = 11h.
    assert list(cal.open_intervals(utc(2026, 10, 24), utc(2026, 10, 26))) == [
        (utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 10, 30))
    ]
    # 1d from Sun 29 Mar 05:00 BST (04:00 UTC, position 3h30m) → Sun 5 Apr, position 3h30m
    # = 04:00 BST = 03:00 UTC.
    assert cal.add(utc(2026, 3, 29, 4), d("1d")) == utc(2026, 4, 5, 3)


def test_opening_times_that_dst_skips_or_repeats() -> None:
    cal = BusinessCalendar(
        timezone="Europe/London", hours={"sun": "01:30-03:00", "sat": "00:00-01:30"}
    )
    # Sun 29 Mar 2026: 01:30 never shows; the office opens when the clock jumps
    # (01:00 UTC, 02:00 BST) and closes at 03:00 BST = 02:00 UTC.
    assert list(cal.open_intervals(utc(2026, 3, 29), utc(2026, 3, 30))) == [
        (utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))
    ]
    # Sun 25 Oct 2026: 01:30 shows twice; it opens at the first showing (01:30 BST =
    # 00:30 UTC) and 03:00 GMT = 03:00 UTC.
    assert list(cal.open_intervals(utc(2026, 10, 25), utc(2026, 10, 26))) == [
        (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 3))
    ]
    closing = BusinessCalendar(timezone="Europe/London", hours={"sun": "00:00-01:30"})
    # Closing at a repeated 01:30 waits for its second showing (01:30 GMT = 01:30 UTC):
    # 00:00 BST (Sat 23:00 UTC) → 01:30 UTC = 2h30m.
    assert list(closing.open_intervals(utc(2026, 10, 24), utc(2026, 10, 26))) == [
        (utc(2026, 10, 24, 23), utc(2026, 10, 25, 1, 30))
    ]


def test_overlapping_dst_readings_are_merged_before_positions() -> None:
    cal = BusinessCalendar(
        timezone="Europe/London",
        hours={
            "sun": "00:30-01:30,01:45-02:15,02:30-10:30",
            "mon": "00:30-01:30,01:45-02:15,02:30-10:30",
        },
    )
    # Sun 25 Oct 2026: 00:30 BST = Sat 23:30 UTC; 01:30 closes at its second showing
    # (01:30 GMT = 01:30 UTC) but 01:45 opens at its first (01:45 BST = 00:45 UTC); 02:15 GMT.
    # Merged: 23:30 → 02:15 UTC, then 02:30 → 10:30 UTC = 2h45m + 8h.
    assert list(cal.open_intervals(utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))) == [
        (utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 2, 15)),
        (utc(2026, 10, 25, 2, 30), utc(2026, 10, 25, 10, 30)),
    ]
    # 03:00 UTC Sunday is position 2h45m + 30m = 3h15m. Monday (GMT): 00:30-01:30 (1h),
    # 01:45-02:15 (30m), then 1h45m into 02:30 → 04:15 UTC.
    assert cal.add(utc(2026, 10, 25, 3), d("1d")) == utc(2026, 10, 26, 4, 15)


def test_each_local_day_stays_within_that_day() -> None:
    # is_open looks only at the local date of the instant; that is sound only if no day's
    # intervals reach outside it, even on DST days (Havana changes at midnight).
    for cal in (*DST_EDGE_CALENDARS.values(), UK, LUNCH):
        zone = ZoneInfo(cal.timezone)
        day = date(2026, 1, 1)
        while day < date(2029, 1, 1):
            intervals = cal._day_intervals(day)
            for a, b in intervals:
                assert a < b
                assert a.astimezone(zone).date() == day, (cal, day)
                last = (b - timedelta(microseconds=1)).astimezone(zone).date()
                assert last == day, (cal, day)
            assert all(x[1] < y[0] for x, y in pairwise(intervals)), (cal, day)
            day += timedelta(days=1)


def test_midnight_dst_changes_havana() -> None:
    # Cuba moves its clocks at midnight: 8 Mar 2026 00:00 CST → 01:00 CDT, and
    # 1 Nov 2026 01:00 CDT → 00:00 CST.
    cal = BusinessCalendar(
        timezone="America/Havana", hours={day: "00:00-24:00" for day in calendar_module.WEEKDAYS}
    )
    # Sat 7 Mar: 00:00 CST (05:00 UTC) → first instant of Sun = 01:00 CDT (05:00 UTC) = 24h.
    assert cal.elapsed(utc(2026, 3, 7, 5), utc(2026, 3, 8, 5)) == timedelta(hours=24)
    # Sun 8 Mar is 23h: 05:00 UTC → Mon 00:00 CDT (04:00 UTC).
    assert cal.elapsed(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)) == timedelta(hours=23)
    # Sat 12:00 UTC = 07:00 CST is 7h into the day; Sunday begins at the jump (05:00 UTC),
    # so 7h in is 12:00 UTC (08:00 CDT).
    assert cal.add(utc(2026, 3, 7, 12), d("1d")) == utc(2026, 3, 8, 12)
    assert cal.is_open(utc(2026, 11, 1, 4, 30))  # 00:30 CDT, the first showing
    assert cal.is_open(utc(2026, 11, 1, 5, 30))  # 00:30 CST, the second showing


# --------------------------------------------------------------------------- two ranges a day


@pytest.mark.parametrize(
    ("start", "target", "due"),
    [
        (utc(2026, 1, 12, 11), "1h", utc(2026, 1, 12, 12)),  # ends exactly at lunch
        (utc(2026, 1, 12, 11), "2h", utc(2026, 1, 12, 14)),  # 1h morning, 1h after 13:00
        (utc(2026, 1, 12, 12, 30), "1h", utc(2026, 1, 12, 14)),  # from lunch: starts 13:00
        (utc(2026, 1, 12, 16, 30), "1h", utc(2026, 1, 13, 8, 30)),  # 30m Mon, 30m Tue
        (utc(2026, 1, 12, 8), "8h", utc(2026, 1, 12, 17)),  # a whole 8h day
        (utc(2026, 1, 12, 8), "9h", utc(2026, 1, 13, 9)),
    ],
)
def test_two_ranges_a_day(start: datetime, target: str, due: datetime) -> None:
    assert LUNCH.add(start, d(target)) == due


def test_two_ranges_is_open_and_elapsed() -> None:
    assert LUNCH.is_open(utc(2026, 1, 12, 11, 59))
    assert not LUNCH.is_open(utc(2026, 1, 12, 12))
    assert not LUNCH.is_open(utc(2026, 1, 12, 12, 59))
    assert LUNCH.is_open(utc(2026, 1, 12, 13))
    assert LUNCH.next_open(utc(2026, 1, 12, 12, 15)) == utc(2026, 1, 12, 13)
    assert LUNCH.elapsed(utc(2026, 1, 12, 11), utc(2026, 1, 12, 14)) == timedelta(hours=2)
    assert list(LUNCH.open_intervals(utc(2026, 1, 12, 10), utc(2026, 1, 13, 9))) == [
        (utc(2026, 1, 12, 10), utc(2026, 1, 12, 12)),
        (utc(2026, 1, 12, 13), utc(2026, 1, 12, 17)),
        (utc(2026, 1, 13, 8), utc(2026, 1, 13, 9)),
    ]


# --------------------------------------------------------------------------- business days


@pytest.mark.parametrize(
    ("cal", "start", "target", "due"),
    [
        (UK, utc(2026, 1, 12, 10), "2d", utc(2026, 1, 14, 10)),  # Mon → Wed
        (UK, utc(2026, 1, 15, 10), "2d", utc(2026, 1, 19, 10)),  # Thu → Fri → Mon
        (UK, utc(2026, 1, 12, 10), "10d", utc(2026, 1, 26, 10)),  # two weeks
        # Tue 22 Dec 15:00: open days after are Wed 23, then (24, 25, weekend, 28 closed)
        # Tue 29 → 15:00.
        (UK, utc(2026, 12, 22, 15), "2d", utc(2026, 12, 29, 15)),
        (UK, utc(2026, 12, 23, 9, 30), "1d", utc(2026, 12, 29, 9, 30)),
        # 3 open days after Wed 23 Dec: Tue 29, Wed 30, Thu 31 → 11:00.
        (UK, utc(2026, 12, 23, 11), "3d", utc(2026, 12, 31, 11)),
        # ...and a 4th skips New Year and the weekend: Mon 4 Jan 2027.
        (UK, utc(2026, 12, 23, 11), "4d", utc(2027, 1, 4, 11)),
        # After closing counts as position 0 of the next open day: Mon 19:00 → Tue 08:00
        # is the base, one open day later is Wed 08:00.
        (UK, utc(2026, 1, 12, 19), "1d", utc(2026, 1, 14, 8)),
        # Closing time itself is outside hours, so it behaves the same.
        (UK, utc(2026, 1, 12, 18), "1d", utc(2026, 1, 14, 8)),
        # Before opening: position 0 of that same day → Tue 08:00.
        (UK, utc(2026, 1, 12, 7), "1d", utc(2026, 1, 13, 8)),
        # Saturday: base is Mon (position 0), one open day later is Tue 08:00.
        (UK, utc(2026, 1, 10, 10), "1d", utc(2026, 1, 13, 8)),
        # Days first, then clock: Mon 17:30 → Tue 17:30, +1h = 30m Tue + 30m Wed → 08:30.
        (UK, utc(2026, 1, 12, 17, 30), "1d1h", utc(2026, 1, 14, 8, 30)),
        # Same wall position across the spring change: Fri 10:00 GMT → Mon 10:00 BST (09 UTC).
        (UK, utc(2026, 3, 27, 10), "1d", utc(2026, 3, 30, 9)),
        # Lunch counts as the end of the morning: Mon 12:30 is position 4h → Tue 12:00.
        (LUNCH, utc(2026, 1, 12, 12, 30), "1d", utc(2026, 1, 13, 12)),
        (LUNCH, utc(2026, 1, 12, 14), "1d", utc(2026, 1, 13, 14)),
        # On an always-open calendar a day is 24 real hours, DST or not.
        (ALWAYS, utc(2026, 1, 12, 10), "1d", utc(2026, 1, 13, 10)),
        (ALWAYS_LONDON, utc(2026, 3, 28, 12), "1d", utc(2026, 3, 29, 12)),
        (ALWAYS_LONDON, utc(2026, 3, 28, 12), "2d3h", utc(2026, 3, 30, 15)),
    ],
)
def test_add_business_days(
    cal: BusinessCalendar, start: datetime, target: str, due: datetime
) -> None:
    assert cal.add(start, d(target)) == due


def test_business_day_position_clamped_on_a_shorter_day() -> None:
    cal = BusinessCalendar(
        timezone="UTC",
        hours={
            "mon": "08:00-18:00",
            "tue": "08:00-18:00",
            "wed": "08:00-18:00",
            "thu": "08:00-18:00",
            "fri": "08:00-13:00",
        },
    )
    # Thu 16:00 is position 8h; Friday has only 5h → Fri 13:00 (its closing).
    assert cal.add(utc(2026, 1, 15, 16), d("1d")) == utc(2026, 1, 16, 13)
    # ...then 1h more continues on Monday.
    assert cal.add(utc(2026, 1, 15, 16), d("1d1h")) == utc(2026, 1, 19, 9)
    # Fri 12:00 (position 4h) → Mon 12:00.
    assert cal.add(utc(2026, 1, 16, 12), d("1d")) == utc(2026, 1, 19, 12)


# --------------------------------------------------------------------------- elapsed


def test_elapsed_plain() -> None:
    # Fri 09:00 → Tue 12:00: Fri 9h + Mon 10h + Tue 4h = 23h.
    assert UK.elapsed(utc(2026, 1, 9, 9), utc(2026, 1, 13, 12)) == timedelta(hours=23)
    # Both ends outside hours.
    assert UK.elapsed(utc(2026, 1, 9, 19), utc(2026, 1, 12, 7)) == timedelta(0)
    # Over Christmas: Wed 23 Dec 17:00 → Tue 29 Dec 12:00 = 1h + 4h.
    assert UK.elapsed(utc(2026, 12, 23, 17), utc(2026, 12, 29, 12)) == timedelta(hours=5)


def test_elapsed_end_before_start_is_zero() -> None:
    assert UK.elapsed(utc(2026, 1, 13, 12), utc(2026, 1, 12, 12)) == timedelta(0)
    assert UK.elapsed(utc(2026, 1, 13, 12), utc(2026, 1, 13, 12)) == timedelta(0)
    assert ALWAYS.elapsed(utc(2026, 1, 13, 12), utc(2026, 1, 12, 12)) == timedelta(0)


def test_elapsed_pause_over_a_weekend() -> None:
    start, end = utc(2026, 1, 9, 9), utc(2026, 1, 13, 12)  # 23h of business time
    # Paused Fri 16:00 → Mon 10:00: removes Fri 16-18 and Mon 08-10 = 4h.
    pause = (utc(2026, 1, 9, 16), utc(2026, 1, 12, 10))
    assert UK.elapsed(start, end, [pause]) == timedelta(hours=19)


def test_elapsed_overlapping_pauses_not_subtracted_twice() -> None:
    start, end = utc(2026, 1, 9, 9), utc(2026, 1, 13, 12)
    pauses = [
        (utc(2026, 1, 9, 16), utc(2026, 1, 12, 9)),
        (utc(2026, 1, 12, 8, 30), utc(2026, 1, 12, 10)),  # overlaps the first
        (utc(2026, 1, 9, 17), utc(2026, 1, 9, 17, 30)),  # inside the first
        (utc(2026, 1, 9, 16), utc(2026, 1, 12, 9)),  # duplicate
    ]
    # Union is Fri 16:00 → Mon 10:00 → 4h.
    assert UK.elapsed(start, end, pauses) == timedelta(hours=19)


def test_elapsed_pauses_outside_the_range_are_clipped() -> None:
    start, end = utc(2026, 1, 9, 9), utc(2026, 1, 13, 12)
    # Thu 10:00 → Fri 10:00 only overlaps Fri 09-10: 1h.
    assert UK.elapsed(start, end, [(utc(2026, 1, 8, 10), utc(2026, 1, 9, 10))]) == timedelta(
        hours=22
    )
    # Tue 11:00 → Wed 15:00 only overlaps Tue 11-12: 1h.
    assert UK.elapsed(start, end, [(utc(2026, 1, 13, 11), utc(2026, 1, 14, 15))]) == timedelta(
        hours=22
    )
    # Entirely before, entirely after, within the weekend, zero-length: nothing.
    nothing = [
        (utc(2026, 1, 7, 9), utc(2026, 1, 7, 17)),
        (utc(2026, 1, 14, 9), utc(2026, 1, 14, 17)),
        (utc(2026, 1, 10, 9), utc(2026, 1, 11, 17)),
        (utc(2026, 1, 12, 9), utc(2026, 1, 12, 9)),
    ]
    assert UK.elapsed(start, end, nothing) == timedelta(hours=23)
    # A pause covering everything leaves nothing.
    assert UK.elapsed(start, end, [(utc(2026, 1, 1), utc(2026, 2, 1))]) == timedelta(0)


def test_elapsed_always_open_is_plain_difference_minus_pauses() -> None:
    start, end = utc(2026, 3, 28, 12), utc(2026, 3, 30, 12)  # 48 real hours
    pauses = [(utc(2026, 3, 27), utc(2026, 3, 28, 18)), (utc(2026, 3, 28, 17), utc(2026, 3, 29))]
    # Union clipped: 28th 12:00 → 29th 00:00 = 12h.
    assert ALWAYS_LONDON.elapsed(start, end, pauses) == timedelta(hours=36)


def test_reversed_pause_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("paused[0] ends before it starts")):
        UK.elapsed(utc(2026, 1, 9), utc(2026, 1, 10), [(utc(2026, 1, 9, 12), utc(2026, 1, 9, 11))])


# --------------------------------------------------------------------------- is_open, next_open


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2026, 1, 12, 8), True),  # opening instant is open
        (utc(2026, 1, 12, 7, 59, 59), False),
        (utc(2026, 1, 12, 17, 59, 59), True),
        (utc(2026, 1, 12, 18), False),  # closing instant is closed
        (utc(2026, 1, 10, 12), False),  # Saturday
        (utc(2026, 6, 8, 7, 30), True),  # 08:30 BST
        (utc(2026, 6, 8, 17, 30), False),  # 18:30 BST
        (utc(2026, 12, 24, 12), False),  # closed date
        (utc(2026, 12, 28, 12), False),  # Boxing Day substitute
        (datetime(2026, 6, 8, 4, 0, tzinfo=ZoneInfo("America/New_York")), True),  # 09:00 BST
    ],
)
def test_is_open(at: datetime, expected: bool) -> None:
    assert UK.is_open(at) is expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2026, 1, 12, 9, 15), utc(2026, 1, 12, 9, 15)),  # open: itself
        (utc(2026, 1, 9, 18), utc(2026, 1, 12, 8)),  # Fri closing → Mon 08:00
        (utc(2026, 12, 23, 18, 30), utc(2026, 12, 29, 8)),  # Christmas closures
        (utc(2026, 3, 28, 12), utc(2026, 3, 30, 7)),  # Mon 08:00 BST
        (utc(2027, 3, 25, 19), utc(2027, 3, 30, 7)),  # Easter 2027, BST
    ],
)
def test_next_open(at: datetime, expected: datetime) -> None:
    result = UK.next_open(at)
    assert result == expected
    assert result.tzinfo is UTC


def test_always_open_is_open_and_next_open() -> None:
    assert ALWAYS.is_open(utc(2026, 12, 25, 3))
    assert ALWAYS.next_open(utc(2026, 12, 25, 3)) == utc(2026, 12, 25, 3)
    assert list(ALWAYS.open_intervals(utc(2026, 1, 1), utc(2026, 1, 2))) == [
        (utc(2026, 1, 1), utc(2026, 1, 2))
    ]


def test_open_intervals_clipped_and_utc() -> None:
    result = list(UK.open_intervals(london(2026, 6, 5, 12), london(2026, 6, 9, 9, 30)))
    assert result == [
        (utc(2026, 6, 5, 11), utc(2026, 6, 5, 17)),  # Fri 12:00-18:00 BST
        (utc(2026, 6, 8, 7), utc(2026, 6, 8, 17)),  # Mon
        (utc(2026, 6, 9, 7), utc(2026, 6, 9, 8, 30)),  # Tue until 09:30 BST
    ]
    assert all(a.tzinfo is UTC and b.tzinfo is UTC for a, b in result)
    assert list(UK.open_intervals(utc(2026, 6, 9), utc(2026, 6, 8))) == []


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hours": {"mon": "8-18"}}, "hours.mon: '8-18' is not HH:MM-HH:MM"),
        ({"hours": {"tue": "08:00-18:00,13:00"}}, "hours.tue: '13:00' is not HH:MM-HH:MM"),
        ({"hours": {"wed": "25:00-26:00"}}, "hours.wed: 25:00 is not a valid opening time"),
        ({"hours": {"wed": "24:00-24:00"}}, "hours.wed: 24:00 is not a valid opening time"),
        ({"hours": {"thu": "08:00-24:30"}}, "hours.thu: 24:30 is not a valid closing time"),
        ({"hours": {"thu": "08:00-12:60"}}, "hours.thu: 12:60 is not a valid closing time"),
        ({"hours": {"fri": "18:00-08:00"}}, "hours.fri: '18:00-08:00' closes before it opens"),
        ({"hours": {"fri": "08:00-08:00"}}, "hours.fri: '08:00-08:00' closes before it opens"),
        (
            {"hours": {"sat": "08:00-12:00,11:00-13:00"}},
            "hours.sat: ranges 08:00-12:00 and 11:00-13:00 overlap",
        ),
        ({"hours": {"sun": 8}}, "hours.sun: expected a string like '08:00-18:00', got int"),
        ({"hours": {"monday": "08:00-18:00"}}, "hours.monday: unknown weekday"),
        ({"hours": {"Mon": "08:00-18:00"}}, "hours.Mon: unknown weekday"),
        ({"hours": {}}, "hours: the calendar is never open"),
        ({"hours": {"mon": "closed"}}, "hours: the calendar is never open"),
        ({}, "hours: required unless always_open is true"),
        ({"timezone": "Mars/Olympus", "hours": WEEKDAYS_8_18}, "timezone: unknown time zone"),
        ({"hours": WEEKDAYS_8_18, "holidays_country": "XX"}, "holidays_country: "),
        (
            {"hours": WEEKDAYS_8_18, "holidays_country": "GB", "holidays_subdiv": "XYZ"},
            "holidays_subdiv: ",
        ),
        ({"hours": WEEKDAYS_8_18, "holidays_subdiv": "ENG"}, "holidays_subdiv: given without"),
        ({"hours": WEEKDAYS_8_18, "closed": ["24/12/2026"]}, "closed[0]: '24/12/2026' is not"),
        (
            {"hours": WEEKDAYS_8_18, "closed": [date(2026, 1, 2), utc(2026, 12, 24)]},
            "closed[1]: expected a date, got datetime",
        ),
        (
            {"always_open": True, "hours": WEEKDAYS_8_18},
            "always_open: cannot be combined with hours",
        ),
    ],
)
def test_constructor_errors_name_the_key(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CalendarError, match="^" + re.escape(message)):
        BusinessCalendar(**kwargs)  # type: ignore[arg-type]


def test_calendar_error_is_a_value_error() -> None:
    assert issubclass(CalendarError, ValueError)


def test_accepted_hours_forms() -> None:
    cal = BusinessCalendar(
        hours={"mon": " 08:00 - 12:00 , 12:00-17:30 ", "tue": "00:00-24:00", "wed": "closed"},
        closed=["2026-01-13"],  # a Tuesday, given as a config string
    )
    # Touching ranges merge into one stretch.
    assert list(cal.open_intervals(utc(2026, 1, 12), utc(2026, 1, 15))) == [
        (utc(2026, 1, 12, 8), utc(2026, 1, 12, 17, 30)),
    ]
    assert cal.next_open(utc(2026, 1, 12, 18)) == utc(2026, 1, 19, 8)
    assert cal.add(utc(2026, 1, 19, 17), d("2h")) == utc(2026, 1, 20, 1, 30)


@pytest.mark.parametrize(
    "call",
    [
        lambda: UK.add(datetime(2026, 1, 12, 9), d("1h")),
        lambda: UK.is_open(datetime(2026, 1, 12, 9)),
        lambda: UK.next_open(datetime(2026, 1, 12, 9)),
        lambda: UK.elapsed(datetime(2026, 1, 12, 9), utc(2026, 1, 12, 10)),
        lambda: UK.elapsed(utc(2026, 1, 12, 9), datetime(2026, 1, 12, 10)),
        lambda: UK.elapsed(
            utc(2026, 1, 12), utc(2026, 1, 13), [(datetime(2026, 1, 12, 9), utc(2026, 1, 12, 10))]
        ),
        lambda: list(UK.open_intervals(datetime(2026, 1, 12, 9), utc(2026, 1, 12, 10))),
        lambda: ALWAYS.add(datetime(2026, 1, 12, 9), d("1h")),
        lambda: ALWAYS.is_open(datetime(2026, 1, 12, 9)),
    ],
)
def test_naive_datetimes_rejected(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        call()


def test_ten_year_guard() -> None:
    # About 2,600 open days fit in ten years; 5,000 do not.
    with pytest.raises(CalendarError, match="~10 years"):
        UK.add(utc(2026, 1, 12, 9), Duration(days=5000))
    # 10h a day × ~2,600 days ≈ 26,000h; 40,000h is past the guard.
    with pytest.raises(CalendarError, match="~10 years"):
        UK.add(utc(2026, 1, 12, 9), Duration(seconds=40_000 * 3600))
    # A calendar open one hour on 29 Feb only: the next opening after 1 Mar 2028 is in 2032,
    # within the guard; but it needs more than ten years to accumulate 4h.
    every_day = (date(2028, 1, 1) + timedelta(days=i) for i in range(366 * 20))
    rare = BusinessCalendar(
        hours={day: "00:00-01:00" for day in calendar_module.WEEKDAYS},
        closed=[day for day in every_day if (day.month, day.day) != (2, 29)],
    )
    assert rare.next_open(utc(2028, 3, 1)) == utc(2032, 2, 29)
    with pytest.raises(CalendarError, match="~10 years"):
        rare.add(utc(2028, 3, 1), d("4h"))


# --------------------------------------------------------------------------- O(days), caching


def count_day_lookups(cal: BusinessCalendar, monkeypatch: pytest.MonkeyPatch) -> list[date]:
    """Record every local day the calendar looks at (cache hits included)."""
    seen: list[date] = []
    real = cal._day_intervals

    def counting(day: date) -> tuple[tuple[datetime, datetime], ...]:
        seen.append(day)
        return real(day)

    monkeypatch.setattr(cal, "_day_intervals", counting)
    return seen


def days_spanned(start: datetime, end: datetime) -> int:
    return (end.astimezone(LONDON).date() - start.astimezone(LONDON).date()).days + 1


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (utc(2026, 1, 12, 10), "10d"),
        (utc(2026, 12, 23, 17), "10d"),
        (utc(2026, 1, 12, 10), "500h"),  # 50 business days ≈ 70 calendar days
        (utc(2026, 12, 23, 17), "2000h"),  # ≈ 280 calendar days, two holiday years
    ],
)
def test_add_examines_each_day_once(
    start: datetime, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cal = uk_office()
    seen = count_day_lookups(cal, monkeypatch)
    due = cal.add(start, d(target))
    # Minute by minute would be tens of thousands of steps; whole intervals means at most
    # one lookup per day spanned, plus a couple for the position/target day.
    assert 1 <= len(seen) <= days_spanned(start, due) + 3
    assert len(set(seen)) <= days_spanned(start, due)


def test_add_10d_result_and_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    cal = uk_office()
    seen = count_day_lookups(cal, monkeypatch)
    # Mon 12 Jan + 10 open days = Mon 26 Jan, same time; 15 local days from 12 to 26 Jan.
    assert cal.add(utc(2026, 1, 12, 10), d("10d")) == utc(2026, 1, 26, 10)
    assert len(seen) <= 15 + 2


def test_elapsed_over_a_year_examines_each_day_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cal = uk_office()
    seen = count_day_lookups(cal, monkeypatch)
    # 2026 has 261 weekdays, 8 England bank holidays on weekdays (Boxing Day is a Saturday;
    # its substitute Monday 28th is counted) and our closed 24 Dec: 252 days × 10h.
    assert cal.elapsed(utc(2026, 1, 1), utc(2027, 1, 1)) == timedelta(hours=2520)
    assert len(seen) <= 366 + 1


def test_day_intervals_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    cal = uk_office()
    built: list[date] = []
    real = cal._build_day

    def counting(day: date) -> tuple[tuple[datetime, datetime], ...]:
        built.append(day)
        return real(day)

    monkeypatch.setattr(cal, "_build_day", counting)
    cal.add(utc(2026, 1, 12, 10), d("10d"))
    first = len(built)
    assert first > 0
    cal.add(utc(2026, 1, 12, 10), d("10d"))
    cal.elapsed(utc(2026, 1, 12, 10), utc(2026, 1, 26, 10))
    assert len(built) == first


# --------------------------------------------------------------------------- properties

CALENDARS = {"uk": UK, "two-ranges": LUNCH, "always": ALWAYS}
# Calendars whose opening or closing times fall on DST changes; checked with starts
# clustered around those changes.
DST_EDGE_CALENDARS = {
    "london-nights": BusinessCalendar(
        timezone="Europe/London",
        hours={day: "00:30-01:30,01:45-02:15,02:30-10:30" for day in calendar_module.WEEKDAYS},
    ),
    "havana-24h": BusinessCalendar(
        timezone="America/Havana",
        hours={day: "00:00-00:30,00:45-24:00" for day in calendar_module.WEEKDAYS},
    ),
    "lord-howe": BusinessCalendar(  # 30-minute DST shift at 02:00
        timezone="Australia/Lord_Howe",
        hours={day: "01:40-02:10,02:20-03:00" for day in calendar_module.WEEKDAYS},
    ),
}
DAY_LENGTH = {
    "uk": timedelta(hours=10),
    "two-ranges": timedelta(hours=8),
    "always": timedelta(hours=24),
}

starts = st.datetimes(
    min_value=datetime(2026, 1, 1),
    max_value=datetime(2028, 12, 31, 23, 59),
    timezones=st.just(UTC),
).map(lambda t: t.replace(second=0, microsecond=0))
TRANSITIONS = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2027, 3, 28, 1),
    utc(2027, 10, 31, 1),
    utc(2026, 3, 8, 5),
    utc(2026, 11, 1, 5),
    utc(2027, 3, 14, 5),
    utc(2027, 11, 7, 5),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15),
    utc(2027, 4, 3, 15),
    utc(2027, 10, 2, 15),
]
near_transitions = st.builds(
    lambda base, minutes: base + timedelta(minutes=minutes),
    st.sampled_from(TRANSITIONS),
    st.integers(-4 * 24 * 60, 4 * 24 * 60),
)
clock_durations = st.integers(0, 200 * 3600).map(lambda s: Duration(seconds=s))


def assert_inside_or_at_end(cal: BusinessCalendar, instant: datetime) -> None:
    around = list(cal.open_intervals(instant - timedelta(days=2), instant + timedelta(days=2)))
    assert any(a < instant <= b for a, b in around), (instant, around)


def check_add_roundtrip(cal: BusinessCalendar, start: datetime, duration: Duration) -> None:
    due = cal.add(start, duration)
    assert due.tzinfo is UTC
    assert cal.elapsed(start, due) == duration.clock
    if duration:
        assert due > start
        assert_inside_or_at_end(cal, due)
    else:
        assert due == start


@pytest.mark.parametrize("name", CALENDARS)
@settings(max_examples=examples(2000), deadline=None)
@given(start=starts, duration=clock_durations)
def test_property_elapsed_inverts_add(name: str, start: datetime, duration: Duration) -> None:
    check_add_roundtrip(CALENDARS[name], start, duration)


@pytest.mark.parametrize("name", DST_EDGE_CALENDARS)
@settings(max_examples=examples(2000), deadline=None)
@given(start=st.one_of(near_transitions, starts), duration=clock_durations)
def test_property_elapsed_inverts_add_dst_edges(
    name: str, start: datetime, duration: Duration
) -> None:
    check_add_roundtrip(DST_EDGE_CALENDARS[name], start, duration)


@pytest.mark.parametrize("name", CALENDARS)
@settings(max_examples=examples(2000), deadline=None)
@given(start=starts, d1=clock_durations, d2=clock_durations)
def test_property_add_monotonic_in_duration(
    name: str, start: datetime, d1: Duration, d2: Duration
) -> None:
    cal = CALENDARS[name]
    small, large = sorted((d1, d2))
    assert cal.add(start, small) <= cal.add(start, large)


@pytest.mark.parametrize("name", [*CALENDARS, *DST_EDGE_CALENDARS])
@settings(max_examples=examples(2000), deadline=None)
@given(
    s1=st.one_of(starts, near_transitions),
    s2=st.one_of(starts, near_transitions),
    duration=clock_durations,
)
def test_property_add_monotonic_in_start(
    name: str, s1: datetime, s2: datetime, duration: Duration
) -> None:
    cal = {**CALENDARS, **DST_EDGE_CALENDARS}[name]
    early, late = sorted((s1, s2))
    assert cal.add(early, duration) <= cal.add(late, duration)


@pytest.mark.parametrize("name", CALENDARS)
@settings(max_examples=examples(2000), deadline=None)
@given(s1=starts, s2=starts, days=st.integers(0, 15), seconds=st.integers(0, 20 * 3600))
def test_property_business_days(
    name: str, s1: datetime, s2: datetime, days: int, seconds: int
) -> None:
    cal = CALENDARS[name]
    duration = Duration(days=days, seconds=seconds)
    due = cal.add(s1, duration)
    # Every open day of these calendars is the same length, so n business days are n of
    # those lengths of business time, whatever the starting position.
    assert cal.elapsed(s1, due) == days * DAY_LENGTH[name] + duration.clock
    if duration:
        around = list(cal.open_intervals(due - timedelta(days=2), due + timedelta(days=2)))
        assert any(a <= due <= b for a, b in around)
    early, late = sorted((s1, s2))
    assert cal.add(early, duration) <= cal.add(late, duration)
    assert cal.add(s1, Duration(days=days)) <= due
