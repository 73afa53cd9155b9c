"""Support hours in words (``rules.hours.describe_hours``) and the report arithmetic
(``rules.report``): outcomes, medians, bars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postdesk.workflow.rules.config import CalendarConfig
from postdesk.workflow.rules.hours import describe_hours
from postdesk.workflow.rules.report import (
    FAIR_COLOUR,
    GOOD_COLOUR,
    POOR_COLOUR,
    allowance_bar,
    clock_outcome,
    compliance_bar,
    format_duration,
    median,
)

DUE = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)


def test_consecutive_days_with_the_same_hours_are_one_span() -> None:
    split = "09:00-12:00,13:00-18:00"
    cal = CalendarConfig(timezone="Asia/Tokyo",
                         hours={d: split for d in ("mon", "tue", "wed", "thu", "fri")}
                         | {"sat": "10:00-14:00"})
    assert describe_hours(cal) == ("Mon-Fri 09:00-12:00, 13:00-18:00; Sat 10:00-14:00 "
                                   "(Asia/Tokyo time)")


def test_holidays_and_always_open_are_said_plainly() -> None:
    cal = CalendarConfig(timezone="Europe/London", hours={"mon": "08:00-18:00"},
                         holidays={"country": "GB", "subdiv": "ENG"})
    assert describe_hours(cal) == ("Mon 08:00-18:00 (Europe/London time), closed on "
                                   "public holidays (GB-ENG)")
    assert describe_hours(CalendarConfig(always_open=True)) == "24 hours a day, every day"


def test_a_clock_is_met_only_when_it_stopped_on_or_before_due() -> None:
    assert clock_outcome(DUE, DUE, DUE + timedelta(days=9)) == "met"
    assert clock_outcome(DUE, DUE + timedelta(seconds=5), DUE + timedelta(seconds=5)) == "missed"
    assert clock_outcome(DUE, None, DUE) == "open"
    assert clock_outcome(DUE, None, DUE + timedelta(seconds=1)) == "missed"


def test_median_of_odd_and_even_counts() -> None:
    h = timedelta(hours=1)
    assert median([5 * h, h, 4 * h]) == 4 * h
    assert median([h, 2 * h, 4 * h, 10 * h]) == 3 * h
    assert median([]) is None


def test_bars_are_coloured_by_threshold_and_fill_their_share() -> None:
    assert compliance_bar(95.0) == compliance_bar(95.0, 200)
    assert (compliance_bar(95.0).colour, compliance_bar(94.9).colour,
            compliance_bar(79.9).colour) == (GOOD_COLOUR, FAIR_COLOUR, POOR_COLOUR)
    assert (compliance_bar(50.0).filled, compliance_bar(50.0).empty) == (100, 100)
    over = allowance_bar(timedelta(hours=3), timedelta(hours=2))
    assert (over.filled, over.empty, over.colour) == (200, 0, POOR_COLOUR)
    assert allowance_bar(timedelta(hours=1), timedelta(hours=4)).filled == 50


def test_durations_read_as_people_write_them() -> None:
    assert [format_duration(timedelta(seconds=s)) for s in (5, 300, 7500, 190800)] == [
        "5s", "5m", "2h 05m", "2d 5h"]
    assert format_duration(None) == "-"
