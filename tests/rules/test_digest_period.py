"""When a digest is due (``rules.digest_period``): periods on the digest calendar."""

from __future__ import annotations

from datetime import UTC, datetime

from postdesk.workflow.rules.calendar import BusinessCalendar
from postdesk.workflow.rules.config import DigestConfig
from postdesk.workflow.rules.digest_period import WEEKDAYS_ALL_DAY, due_digest

WEEKDAYS = BusinessCalendar(timezone="UTC", hours=WEEKDAYS_ALL_DAY)
ENGLISH_WEEKDAYS = BusinessCalendar(timezone="Europe/London", hours=WEEKDAYS_ALL_DAY,
                                    holidays_country="GB", holidays_subdiv="ENG")
DAILY = DigestConfig(managers=["boss@agency.example"], period="daily")
WEEKLY = DigestConfig(managers=["boss@agency.example"], period="weekly")
LONDON_WEEKLY = DigestConfig(managers=["boss@agency.example"], period="weekly",
                             timezone="Europe/London")
LONDON_DAILY = DigestConfig(managers=["boss@agency.example"], timezone="Europe/London")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_weekly_digest_goes_out_on_the_first_open_day_of_the_iso_week_once() -> None:
    sunday, monday, tuesday = utc(2026, 11, 29, 9), utc(2026, 11, 30, 9), utc(2026, 12, 1, 9)
    assert due_digest(WEEKLY, WEEKDAYS, sunday, last_sent=None) is None
    due = due_digest(WEEKLY, WEEKDAYS, monday, last_sent=None)
    assert due is not None and due.period == "2026-11-30" and due.slot == utc(2026, 11, 30, 8, 30)
    assert due_digest(WEEKLY, WEEKDAYS, tuesday, last_sent="2026-11-30") is None


def test_a_weekly_digest_is_not_sent_every_day() -> None:
    """The old rule named the period by today's date, so a weekly digest went daily."""
    sent = "2026-11-30"
    for day in range(1, 6):                      # Tuesday 1 Dec .. Saturday 5 Dec
        assert due_digest(WEEKLY, WEEKDAYS, utc(2026, 12, day, 12), last_sent=sent) is None
    assert due_digest(WEEKLY, WEEKDAYS, utc(2026, 12, 7, 8, 30), last_sent=sent) is not None


def test_a_weekly_digest_waits_for_the_tuesday_after_an_easter_monday() -> None:
    """Easter Monday 2027 is 29 March: the week's first open day is Tuesday."""
    assert due_digest(LONDON_WEEKLY, ENGLISH_WEEKDAYS, utc(2027, 3, 29, 9), "2027-03-22") is None
    due = due_digest(LONDON_WEEKLY, ENGLISH_WEEKDAYS, utc(2027, 3, 30, 9), "2027-03-22")
    assert due is not None and due.period == "2027-03-30"
    assert due.slot == utc(2027, 3, 30, 7, 30)   # 08:30 BST


def test_a_daily_digest_skips_weekends_and_bank_holidays() -> None:
    friday = "2027-04-30"
    for when in (utc(2027, 5, 1, 10), utc(2027, 5, 2, 10), utc(2027, 5, 3, 10)):
        assert due_digest(LONDON_DAILY, ENGLISH_WEEKDAYS, when, friday) is None
    due = due_digest(LONDON_DAILY, ENGLISH_WEEKDAYS, utc(2027, 5, 4, 10), friday)
    assert due is not None and due.period == "2027-05-04"


def test_a_daily_digest_is_not_due_before_its_time() -> None:
    assert due_digest(DAILY, WEEKDAYS, utc(2026, 12, 1, 8, 29), "2026-11-30") is None
    assert due_digest(DAILY, WEEKDAYS, utc(2026, 12, 1, 8, 30), "2026-11-30") is not None


def test_digests_missed_while_down_are_sent_once_covering_the_whole_gap() -> None:
    """Last sent Monday; down until Thursday 10:00: one digest, named Thursday, covering
    from Monday's slot; nothing more on Thursday."""
    due = due_digest(DAILY, WEEKDAYS, utc(2026, 12, 3, 10), last_sent="2026-11-30")
    assert due is not None and due.period == "2026-12-03"
    assert due.since == utc(2026, 11, 30, 8, 30)
    assert due_digest(DAILY, WEEKDAYS, utc(2026, 12, 3, 11), last_sent=due.period) is None


def test_a_first_start_sends_only_when_todays_slot_has_passed_on_an_open_day() -> None:
    assert due_digest(DAILY, WEEKDAYS, utc(2026, 11, 29, 12), None) is None      # Sunday
    assert due_digest(DAILY, WEEKDAYS, utc(2026, 11, 30, 8), None) is None       # before 08:30
    first = due_digest(DAILY, WEEKDAYS, utc(2026, 11, 30, 9), None)
    assert first is not None and first.since == utc(2026, 11, 27, 8, 30)      # last Friday
    assert due_digest(WEEKLY, WEEKDAYS, utc(2026, 12, 1, 9), None) is None       # Tuesday


def test_the_digest_zone_decides_the_day() -> None:
    """08:30 in Tokyo on Monday is 23:30 UTC on Sunday."""
    tokyo = DigestConfig(managers=["boss@agency.example"], period="weekly",
                         timezone="Asia/Tokyo")
    calendar = BusinessCalendar(timezone="Asia/Tokyo", hours=WEEKDAYS_ALL_DAY)
    due = due_digest(tokyo, calendar, utc(2026, 11, 29, 23, 31), None)
    assert due is not None and due.period == "2026-11-30"
