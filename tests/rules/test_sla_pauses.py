"""The SLA arithmetic with pause spans (``rules.sla``), pure: no database."""

from __future__ import annotations

from datetime import UTC, datetime

from postdesk.workflow.rules.calendar import BusinessCalendar
from postdesk.workflow.rules.durations import Duration
from postdesk.workflow.rules.sla import due_at, paused_business_time, risk_at

OFFICE = BusinessCalendar(timezone="Europe/London",
                          hours={d: "08:00-18:00" for d in ("mon", "tue", "wed", "thu", "fri")})
TEN_HOURS = Duration(seconds=10 * 3600)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


START = utc(2026, 11, 24, 10)    # Tuesday 10:00 GMT: 8 h on Tuesday, due Wednesday 10:00


def test_without_pauses_the_due_instant_is_the_target_in_business_time() -> None:
    assert due_at(OFFICE, START, TEN_HOURS) == utc(2026, 11, 25, 10)
    assert risk_at(OFFICE, START, TEN_HOURS, 0.75) == utc(2026, 11, 24, 17, 30)


def test_overlapping_pause_spans_count_once() -> None:
    spans = [(utc(2026, 11, 24, 11), utc(2026, 11, 24, 13)),
             (utc(2026, 11, 24, 12), utc(2026, 11, 24, 14))]     # 11:00-14:00 in all
    assert due_at(OFFICE, START, TEN_HOURS, spans) == utc(2026, 11, 25, 13)
    assert paused_business_time(OFFICE, START, utc(2026, 11, 25, 13), spans).seconds == 3 * 3600


def test_a_pause_that_begins_after_the_clock_ran_out_does_not_move_it() -> None:
    """Breached on Wednesday at 10:00; a wait for the client from 11:00 does not make the
    target met after all."""
    late = [(utc(2026, 11, 25, 11), utc(2026, 11, 26, 11))]
    assert due_at(OFFICE, START, TEN_HOURS, late) == utc(2026, 11, 25, 10)


def test_a_pause_before_the_clock_started_is_ignored_and_one_spanning_its_start_is_clipped(
        ) -> None:
    before = [(utc(2026, 11, 23, 9), utc(2026, 11, 23, 17))]
    spanning = [(utc(2026, 11, 23, 17), utc(2026, 11, 24, 11))]  # counts 10:00-11:00 only
    assert due_at(OFFICE, START, TEN_HOURS, before) == utc(2026, 11, 25, 10)
    assert due_at(OFFICE, START, TEN_HOURS, spanning) == utc(2026, 11, 25, 11)


def test_a_pause_wholly_out_of_hours_changes_nothing() -> None:
    night = [(utc(2026, 11, 24, 18), utc(2026, 11, 25, 8))]
    assert due_at(OFFICE, START, TEN_HOURS, night) == utc(2026, 11, 25, 10)
    assert risk_at(OFFICE, START, TEN_HOURS, 0.75, night) == utc(2026, 11, 24, 17, 30)


def test_at_risk_is_the_share_of_the_net_target_counted_while_not_paused() -> None:
    """Paused 11:00-16:00 (5 h): 7.5 h of unpaused time have run at Wednesday 12:30
    (1 h + 2 h on Tuesday, 4.5 h on Wednesday); due at 15:00 (2.5 h later)."""
    pause = [(utc(2026, 11, 24, 11), utc(2026, 11, 24, 16))]
    assert risk_at(OFFICE, START, TEN_HOURS, 0.75, pause) == utc(2026, 11, 25, 12, 30)
    assert due_at(OFFICE, START, TEN_HOURS, pause) == utc(2026, 11, 25, 15)
