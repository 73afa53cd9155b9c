"""An org's support-hour allowance in the database: ``#time`` books an entry in the org's
month and ``balance`` reports that month. Both decide the month in the org's own zone
(``rules.zones.org_zone``), so they agree even when the org's zone is not its plan
calendar's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.directory import staff_by_email
from postdesk.storage.models import Message, Outbox, OutboxStatus, Ticket, TimeEntry
from postdesk.workflow.desk.allowance import log_time, org_month_balance, per_ticket_usage
from postdesk.workflow.desk.outbox import OutboxWriter, render_drafts
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.allowance import month_of
from postdesk.workflow.rules.config import Config
from tests.support import BASECO

# Tokyo Co is on the Base plan (2h a month, calendar in London) but keeps Tokyo time.
TOKYO_DESK = BASECO + """
[[orgs]]
slug = "tokyoco"
name = "Tokyo Co"
plan = "base"
domains = ["tokyo.example"]
timezone = "Asia/Tokyo"

[plans.besteffort]
calendar = "always"

[[orgs]]
slug = "freeco"
name = "Free Co"
plan = "besteffort"
domains = ["free.example"]
"""

# 23:20 on 31 January in London (the plan calendar), 08:20 on 1 February in Tokyo.
LATE_JANUARY_UTC = datetime(2026, 1, 31, 23, 20, tzinfo=UTC)


@pytest.fixture
def config_extra() -> str:
    return TOKYO_DESK


@pytest.fixture
def log(session: Session, config: Config, outbox: OutboxWriter,
        add_message: Callable[..., Message]) -> Callable[..., None]:
    """``log(ticket, duration, at)``: dev1's ``#time`` on the ticket."""
    staff = staff_by_email(session, "dev1@agency.example")
    assert staff is not None

    def book(ticket: Ticket, duration: timedelta, at: datetime) -> None:
        message = add_message(ticket, None, staff=staff.email, kind="internal")
        log_time(session, config, outbox, ticket=ticket, staff=staff, duration=duration,
                 message=message, now=at)
        session.flush()

    return book


def entries(session: Session) -> list[tuple[int, int, int]]:
    return [(e.year, e.month, e.seconds) for e in session.scalars(
        select(TimeEntry).order_by(TimeEntry.id))]


def test_time_and_balance_agree_on_the_month_for_an_org_whose_zone_differs_from_its_plan(
        session: Session, config: Config, new_ticket: Callable[..., Ticket],
        log: Callable[..., None]) -> None:
    # The instant is still January on the plan calendar's clock: the zones really differ.
    assert month_of(LATE_JANUARY_UTC, ZoneInfo("Europe/London")) == (2026, 1)
    ticket = new_ticket("tokyoco", "kenji@tokyo.example", created_at=LATE_JANUARY_UTC,
                        updated_at=LATE_JANUARY_UTC)

    log(ticket, timedelta(minutes=45), LATE_JANUARY_UTC)

    assert entries(session) == [(2026, 2, 45 * 60)]
    balance = org_month_balance(session, config, ticket.org, LATE_JANUARY_UTC)
    assert balance is not None
    assert (balance.year, balance.month) == (2026, 2)
    assert balance.used == timedelta(minutes=45)
    assert balance.remaining == timedelta(hours=2) - timedelta(minutes=45)
    assert [(t.id, used) for t, used in per_ticket_usage(session, ticket.org, 2026, 2)] == [
        (ticket.id, timedelta(minutes=45))]


def test_an_org_without_its_own_zone_books_in_its_plan_calendars_month(
        session: Session, config: Config, new_ticket: Callable[..., Ticket],
        log: Callable[..., None]) -> None:
    ticket = new_ticket("baseco", "bob@base.example", created_at=LATE_JANUARY_UTC,
                        updated_at=LATE_JANUARY_UTC)
    log(ticket, timedelta(minutes=30), LATE_JANUARY_UTC)
    assert entries(session) == [(2026, 1, 30 * 60)]
    balance = org_month_balance(session, config, ticket.org, LATE_JANUARY_UTC)
    assert balance is not None and (balance.year, balance.month, balance.used) == (
        2026, 1, timedelta(minutes=30))


def test_time_booked_late_in_the_orgs_month_rolls_over_at_its_own_midnight(
        session: Session, config: Config, new_ticket: Callable[..., Ticket],
        log: Callable[..., None]) -> None:
    evening_in_tokyo = datetime(2026, 1, 31, 14, 0, tzinfo=UTC)        # 23:00 in Tokyo
    ticket = new_ticket("tokyoco", "kenji@tokyo.example", created_at=evening_in_tokyo,
                        updated_at=evening_in_tokyo)
    log(ticket, timedelta(minutes=45), evening_in_tokyo)
    assert entries(session) == [(2026, 1, 45 * 60)]

    balance = org_month_balance(session, config, ticket.org, LATE_JANUARY_UTC)

    assert balance is not None
    assert (balance.year, balance.month) == (2026, 2)
    assert balance.used == timedelta(0)
    assert balance.rollover_in == timedelta(hours=1, minutes=15)


def test_a_plan_without_an_allowance_has_no_balance(
        session: Session, config: Config, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket("freeco", "fay@free.example")
    assert org_month_balance(session, config, ticket.org, LATE_JANUARY_UTC) is None


def test_going_over_the_allowance_tells_the_requester_and_the_leads_once(
        session: Session, services: Services, outbox: OutboxWriter,
        new_ticket: Callable[..., Ticket], log: Callable[..., None]) -> None:
    at = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    ticket = new_ticket("baseco", "bob@base.example", created_at=at, updated_at=at)

    log(ticket, timedelta(hours=1, minutes=30), at)
    assert outbox.queued_ids == []                       # 30 minutes still left

    log(ticket, timedelta(hours=1), at + timedelta(hours=1))
    log(ticket, timedelta(minutes=15), at + timedelta(hours=2))

    rows = [session.get(Outbox, i) for i in outbox.queued_ids]
    assert sorted((r.template, r.recipient) for r in rows if r is not None) == [
        ("allowance_exceeded", "bob@base.example"), ("allowance_exceeded", "dev2@agency.example")]
    assert render_drafts(services, outbox.queued_ids) == outbox.queued_ids
    session.expire_all()
    assert all(session.get(Outbox, i).status == OutboxStatus.QUEUED  # type: ignore[union-attr]
               for i in outbox.queued_ids)


def test_the_over_allowance_warning_counts_the_orgs_month_not_the_plan_calendars(
        session: Session, outbox: OutboxWriter, new_ticket: Callable[..., Ticket],
        log: Callable[..., None]) -> None:
    """Tokyo Co uses 1h45m on 31 January (Tokyo), then 45m at 08:20 on 1 February in
    Tokyo (23:20 UTC, still January in London). In London's month that would be 2h30m of
    2h and a warning; in the org's own month it is 45m of a fresh 2h: no warning."""
    january_evening = datetime(2026, 1, 31, 14, 0, tzinfo=UTC)         # 23:00 in Tokyo
    ticket = new_ticket("tokyoco", "kenji@tokyo.example", created_at=january_evening,
                        updated_at=january_evening)
    log(ticket, timedelta(hours=1, minutes=45), january_evening)
    log(ticket, timedelta(minutes=45), LATE_JANUARY_UTC)
    assert entries(session) == [(2026, 1, 105 * 60), (2026, 2, 45 * 60)]
    assert outbox.queued_ids == []
