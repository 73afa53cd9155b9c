"""Pauses kept as spans: the contract's arithmetic on real clocks in the database.

The desk here has the test config's ``uk-office`` calendar (08:00-18:00 Europe/London,
Monday to Friday, English bank holidays closed) and its ``always`` calendar (24/7), and a
plan "contract" whose P1 runs on ``always``:

    first_response  P1 = 8h (24/7)      P3 = 10h (office hours)
    resolution      P1 = 4d (= 96 h)    P3 = 5d (five open days, same position)

Every rule here is also written down in docs/time-keeping.md, naming these tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Event, SlaClock, SlaPause, Ticket
from postdesk.workflow.desk.breaches import scan
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.sla_clocks import ClockKeeper, set_status
from tests.desk.doubles import RecordedDispatch
from tests.support import BASECO, examples

CONTRACT = BASECO + """
[plans.contract]
calendar = "uk-office"
priority_calendar = { P1 = "always" }
first_response = { P1 = "8h", P3 = "10h" }
resolution = { P1 = "4d", P3 = "5d" }

[[orgs]]
slug = "contractco"
name = "Contract Co"
plan = "contract"
domains = ["contract.example"]
"""

STAFF = "dev1@agency.example"


@pytest.fixture
def config_extra() -> str:
    return CONTRACT


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def open_ticket(new_ticket: Callable[..., Ticket], services: Services, session: Session,
                priority: str, when: datetime, org: str = "contractco"
                ) -> tuple[Ticket, ClockKeeper]:
    ticket = new_ticket(org, f"carol@{org.removesuffix('co')}.example", priority=priority,
                        status="open", created_at=when, updated_at=when)
    keeper = services.clocks(session)
    keeper.start_ticket(ticket, when)
    return ticket, keeper


def clock_of(keeper: ClockKeeper, ticket: Ticket, target: str) -> SlaClock:
    (clock,) = keeper.running(ticket, target)
    return clock


def reprioritise(keeper: ClockKeeper, ticket: Ticket, priority: str, at: datetime) -> None:
    ticket.priority = priority
    keeper.reprioritise(ticket, at)


# --- the cases ------------------------------------------------------------------

def test_a_10h_target_paused_7h30_is_at_risk_when_75_percent_of_the_net_target_has_run(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    """Opened Tuesday 24 Nov 2026 08:00 (GMT), 10 h on office hours, paused 09:00-16:30
    (7.5 business hours). Net of the pause, 7.5 h (75% of 10 h) have run at Wednesday
    13:00: 1 h before the pause, 1.5 h after it on Tuesday, 5 h on Wednesday. The old
    rule took 75% of 17.5 h and alerted with only 5.6 h (56%) used."""
    ticket, keeper = open_ticket(new_ticket, services, session, "P3",
                                 utc(2026, 11, 24, 8), org="baseco")
    set_status(keeper, ticket, "pending", utc(2026, 11, 24, 9), STAFF)
    set_status(keeper, ticket, "open", utc(2026, 11, 24, 16, 30), "bob@base.example")
    first = clock_of(keeper, ticket, "first_response")
    assert first.risk_at == utc(2026, 11, 25, 13)
    assert first.due_at == utc(2026, 11, 25, 15, 30)
    session.flush()

    # The scan agrees: nothing a second before, the at-risk alert at the point.
    assert scan(services, RecordedDispatch(), utc(2026, 11, 25, 12, 59, 59)).at_risk == 0
    assert scan(services, RecordedDispatch(), utc(2026, 11, 25, 13)).at_risk == 1


def _pause_over_the_may_bank_holiday(keeper: ClockKeeper, ticket: Ticket) -> None:
    """Friday 30 April 2027 10:30 BST to Tuesday 4 May 08:00 BST: 93.5 real hours, of
    which 7.5 are office hours (Friday 10:30-18:00; Saturday, Sunday and the early May
    bank holiday Monday are closed; Tuesday's pause ends at the opening)."""
    set_status(keeper, ticket, "pending", utc(2027, 4, 30, 9, 30), STAFF)
    set_status(keeper, ticket, "open", utc(2027, 5, 4, 7), "carol@contract.example")


def test_a_p3_ticket_moved_to_p1_after_a_93h30_pause_measures_the_pause_round_the_clock(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    """Opened Friday 30 April 2027 09:00 BST (08:00Z) as P3, paused as above, then
    ``#priority P1``. P1's resolution is 4d = 96 h on the 24/7 calendar: 4 May 08:00Z,
    plus the pause measured on *that* calendar (93.5 h) = 8 May 05:30Z. The old rule
    reused the 7.5 h measured on office hours and said 4 May 15:30Z."""
    ticket, keeper = open_ticket(new_ticket, services, session, "P3", utc(2027, 4, 30, 8))
    _pause_over_the_may_bank_holiday(keeper, ticket)
    reprioritise(keeper, ticket, "P1", utc(2027, 5, 4, 7, 10))
    resolution = clock_of(keeper, ticket, "resolution")
    assert resolution.calendar == "always"
    assert resolution.due_at == utc(2027, 5, 8, 5, 30)
    assert resolution.paused_business_seconds == int(93.5 * 3600)


def test_a_p1_ticket_moved_to_p3_after_a_93h30_pause_measures_the_pause_in_office_hours(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    """The same ticket the other way round: opened as P1, paused as above, then
    ``#priority P3``. P3's resolution is 5d on office hours: five open days after Friday
    30 April (4, 5, 6, 7, 10 May) at the same position, 09:00 BST on Monday 10 May, plus
    the pause measured in office hours (7.5 h) = 16:30 BST = 10 May 15:30Z. The old rule
    added the 93.5 h measured round the clock."""
    ticket, keeper = open_ticket(new_ticket, services, session, "P1", utc(2027, 4, 30, 8))
    _pause_over_the_may_bank_holiday(keeper, ticket)
    reprioritise(keeper, ticket, "P3", utc(2027, 5, 4, 7, 10))
    resolution = clock_of(keeper, ticket, "resolution")
    assert resolution.calendar == "uk-office"
    assert resolution.due_at == utc(2027, 5, 10, 15, 30)
    assert resolution.paused_business_seconds == int(7.5 * 3600)


def test_a_pause_is_stored_as_one_span_per_wait(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = open_ticket(new_ticket, services, session, "P3", utc(2027, 4, 30, 8))
    _pause_over_the_may_bank_holiday(keeper, ticket)
    session.flush()
    spans = session.scalars(select(SlaPause).where(SlaPause.ticket_id == ticket.id)).all()
    assert [(p.started_at, p.ended_at) for p in spans] == [
        (utc(2027, 4, 30, 9, 30), utc(2027, 5, 4, 7))]


def test_a_clock_already_past_due_gets_only_its_breach_alert_in_one_scan(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    """Scheduler down from before the at-risk point until after the due time: the first
    scan after it sends "breached", not "at risk" and "breached" together; nor does a
    later scan send "at risk"."""
    ticket, _ = open_ticket(new_ticket, services, session, "P3", utc(2026, 11, 24, 8),
                            org="baseco")
    session.flush()
    late = utc(2026, 11, 26, 12)    # first response was due Wed 10:00; resolution has none
    first = scan(services, RecordedDispatch(), late)
    again = scan(services, RecordedDispatch(), late + timedelta(hours=1))
    assert (first.at_risk, first.breached) == (0, 1)
    assert (again.at_risk, again.breached) == (0, 0)
    kinds = session.scalars(select(Event.kind).where(Event.ticket_id == ticket.id)).all()
    assert "sla_at_risk" not in kinds and kinds.count("sla_breached") == 1


# --- the property: due instants against an independent minute-by-minute count ----------

LONDON = ZoneInfo("Europe/London")
ENGLISH_HOLIDAYS = holidays.country_holidays("GB", subdiv="ENG", years=range(2027, 2028))
TARGET_MINUTES = {"P1": 8 * 60, "P3": 10 * 60}    # the contract plan's first_response


def office_open(minute: datetime) -> bool:
    """Written from the calendar's description, not from postdesk: 08:00-18:00 London
    wall time, Monday to Friday, not on an English bank holiday."""
    local = minute.astimezone(LONDON)
    return (local.weekday() < 5 and local.date() not in ENGLISH_HOLIDAYS
            and 8 <= local.hour < 18)


def oracle(start: datetime, priority: str, spans: list[tuple[datetime, datetime]],
           share: float = 1.0) -> datetime:
    """Step minute by minute from ``start``, counting each minute that is open on the
    priority's calendar (P1: always) and inside no pause span, until ``share`` of the
    target is counted; the answer is the end of that minute."""
    need = int(TARGET_MINUTES[priority] * share)
    counted, minute = 0, start
    while True:
        paused = any(a <= minute < b for a, b in spans)
        if not paused and (priority == "P1" or office_open(minute)):
            counted += 1
            if counted == need:
                return minute + timedelta(minutes=1)
        minute += timedelta(minutes=1)


steps = st.lists(st.tuples(st.sampled_from(["pause", "resume", "P1", "P3"]),
                           st.integers(min_value=1, max_value=60 * 40)),
                 min_size=1, max_size=6)


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start_minutes=st.integers(min_value=0, max_value=60 * 24 * 60),
       first_priority=st.sampled_from(["P1", "P3"]), plan=steps)
def test_due_and_at_risk_equal_a_minute_by_minute_count_for_any_pauses_and_priority_changes(
        session: Session, services: Services, new_ticket: Callable[..., Ticket],
        start_minutes: int, first_priority: str, plan: list[tuple[str, int]]) -> None:
    """A ticket opened at a random minute between 1 March and 30 April 2027 (across the
    spring DST change, Easter and the May bank holiday) goes through random pauses and
    priority changes; afterwards its first-response clock is due exactly when an
    independent count of open, unpaused minutes on the *current* priority's calendar
    reaches the target, and at risk when it reaches 75% of it. Hour targets only: a
    ``d`` target is "the same position N open days later", not a count of minutes."""
    start = utc(2027, 3, 1) + timedelta(minutes=start_minutes)
    ticket, keeper = open_ticket(new_ticket, services, session, first_priority, start)
    now, paused_since = start, None
    spans: list[tuple[datetime, datetime]] = []
    for step, gap in plan:
        now += timedelta(minutes=gap)
        if step == "pause" and paused_since is None:
            set_status(keeper, ticket, "pending", now, STAFF)
            paused_since = now
        elif step == "resume" and paused_since is not None:
            set_status(keeper, ticket, "open", now, "carol@contract.example")
            spans.append((paused_since, now))
            paused_since = None
        elif step in ("P1", "P3"):
            reprioritise(keeper, ticket, step, now)
    if paused_since is not None:
        set_status(keeper, ticket, "open", now + timedelta(minutes=1), "carol@contract.example")
        spans.append((paused_since, now + timedelta(minutes=1)))
    first = clock_of(keeper, ticket, "first_response")
    assert first.due_at == oracle(start, ticket.priority, spans)
    assert first.risk_at == oracle(start, ticket.priority, spans, share=0.75)
