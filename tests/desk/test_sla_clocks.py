"""SLA clocks on a ticket: started in business time, paused while the ticket waits for
the client, stopped on resolution, restarted on reopening, recomputed on a priority
change. Test desk: Base Co on office hours (08:00-18:00 London, Mon-Fri); Client Co on
Enterprise, whose P1 runs on the always-open calendar. The tests start on a Tuesday at
10:00 (GMT)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Event, SlaClock, Ticket
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.sla_clocks import ClockKeeper, set_status

TUE = datetime(2026, 11, 24, tzinfo=UTC)
WED = TUE + timedelta(days=1)


def at(day: datetime, hh: int, mm: int = 0) -> datetime:
    return day.replace(hour=hh, minute=mm)


def clocks(session: Session, ticket: Ticket) -> list[SlaClock]:
    return list(session.scalars(select(SlaClock).where(SlaClock.ticket_id == ticket.id)
                                .order_by(SlaClock.id)))


def running(keeper: ClockKeeper, ticket: Ticket) -> dict[str, SlaClock]:
    return {c.target: c for c in keeper.running(ticket)}


def opened(new_ticket: Callable[..., Ticket], services: Services, session: Session,
           org: str = "baseco", priority: str = "P3", when: datetime | None = None
           ) -> tuple[Ticket, ClockKeeper]:
    when = when or at(TUE, 10)
    ticket = new_ticket(org, "bob@base.example" if org == "baseco" else "alice@client.example",
                        priority=priority, created_at=when, updated_at=when)
    keeper = services.clocks(session)
    keeper.start_ticket(ticket, when)
    return ticket, keeper


def test_a_new_ticket_starts_first_response_counted_in_office_hours(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session)          # Base P3: 10h
    first = running(keeper, ticket)["first_response"]
    assert first.calendar == "uk-office"
    assert first.due_at == at(WED, 10)          # 8h on Tuesday (10-18), 2h on Wednesday
    assert first.risk_at == at(TUE, 17, 30)     # 75% of the 10h
    assert first.cycle == 0 and first.paused_since is None


def test_a_p1_ticket_runs_first_response_and_resolution_but_next_update_waits(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session, priority="P1")
    assert set(running(keeper, ticket)) == {"first_response", "resolution"}
    assert running(keeper, ticket)["first_response"].due_at == at(TUE, 15)   # 5h


def test_a_priority_calendar_counts_round_the_clock(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    evening = at(TUE, 22)
    p1, keeper = opened(new_ticket, services, session, "clientco", "P1", when=evening)
    p3, _ = opened(new_ticket, services, session, "clientco", "P3", when=evening)
    assert running(keeper, p1)["first_response"].calendar == "always"
    assert running(keeper, p1)["first_response"].due_at == at(TUE, 23)        # 1h, at night
    assert running(keeper, p3)["first_response"].due_at == at(WED, 13)        # 5h from 08:00


def test_waiting_for_the_client_pushes_the_due_time_back_by_the_business_time_paused(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session)
    assert set_status(keeper, ticket, "pending", at(TUE, 11), "dev1@agency.example")
    assert running(keeper, ticket)["first_response"].paused_since == at(TUE, 11)

    assert set_status(keeper, ticket, "open", at(TUE, 13), "bob@base.example")

    first = running(keeper, ticket)["first_response"]
    assert first.paused_since is None
    assert first.paused_business_seconds == 2 * 3600
    assert first.due_at == at(WED, 12)


def test_a_pause_overnight_counts_only_the_office_hours_in_it(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session)
    set_status(keeper, ticket, "pending", at(TUE, 17), "dev1@agency.example")
    set_status(keeper, ticket, "open", at(WED, 9), "bob@base.example")
    first = running(keeper, ticket)["first_response"]
    assert first.paused_business_seconds == 2 * 3600     # 17-18 Tuesday, 08-09 Wednesday
    assert first.due_at == at(WED, 12)


def test_a_clock_started_on_a_pending_ticket_starts_paused(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket("baseco", "bob@base.example", status="pending")
    keeper = services.clocks(session)
    keeper.start_ticket(ticket, at(TUE, 10))
    assert running(keeper, ticket)["first_response"].paused_since == at(TUE, 10)


def test_resolving_stops_every_clock_and_a_second_resolve_changes_nothing(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session, priority="P1")
    assert set_status(keeper, ticket, "resolved", at(TUE, 12), "dev1@agency.example")
    assert keeper.running(ticket) == []
    assert {c.stopped_at for c in clocks(session, ticket)} == {at(TUE, 12)}
    assert ticket.status == "resolved" and ticket.resolved_at == at(TUE, 12)

    assert not set_status(keeper, ticket, "resolved", at(TUE, 13), "dev1@agency.example")
    assert ticket.resolved_at == at(TUE, 12)


def test_set_status_records_the_move_as_an_event(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session)
    set_status(keeper, ticket, "pending", at(TUE, 11), "dev1@agency.example")
    session.flush()
    event = session.scalar(select(Event).where(Event.ticket_id == ticket.id,
                                                Event.kind == "status_changed"))
    assert event is not None
    assert event.actor == "dev1@agency.example"
    assert event.data == {"old": "new", "new": "pending"}


def test_reopening_a_resolved_ticket_starts_a_fresh_resolution_run_only(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session, priority="P1")
    set_status(keeper, ticket, "resolved", at(TUE, 12), "dev1@agency.example")

    set_status(keeper, ticket, "open", at(TUE, 14), "bob@base.example")

    now_running = running(keeper, ticket)
    assert set(now_running) == {"resolution"}
    assert now_running["resolution"].cycle == 1
    assert now_running["resolution"].started_at == at(TUE, 14)
    assert ticket.resolved_at is None


def test_a_public_update_answers_first_response_and_starts_next_update(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session, priority="P2")   # next_update 8h
    keeper.public_update(ticket, at(TUE, 11))
    assert ticket.first_responded_at == at(TUE, 11)
    assert set(running(keeper, ticket)) == {"next_update"}
    assert running(keeper, ticket)["next_update"].due_at == at(WED, 9)      # 7h + 1h

    keeper.public_update(ticket, at(TUE, 15))
    updates = [c for c in clocks(session, ticket) if c.target == "next_update"]
    assert [(c.cycle, c.stopped_at) for c in updates] == [(0, at(TUE, 15)), (1, None)]
    assert ticket.first_responded_at == at(TUE, 11)       # the first one stays the first


def test_raising_the_priority_recomputes_running_clocks_from_their_start(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session, "clientco", "P3")
    ticket.priority = "P1"
    keeper.reprioritise(ticket, at(TUE, 10, 30))
    first = running(keeper, ticket)["first_response"]
    assert first.calendar == "always"
    assert first.due_at == at(TUE, 11)         # 1h from the 10:00 start, not from 10:30


def test_raising_the_priority_starts_the_targets_the_new_priority_has(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session, "baseco", "P3")
    ticket.priority = "P1"
    keeper.reprioritise(ticket, at(TUE, 11))
    now_running = running(keeper, ticket)
    assert set(now_running) == {"first_response", "resolution"}   # no update given yet
    assert now_running["resolution"].started_at == at(TUE, 10)      # counted from opening
    assert now_running["first_response"].due_at == at(TUE, 15)


def test_a_followup_promise_is_due_when_promised(
        session: Session, services: Services, new_ticket: Callable[..., Ticket]) -> None:
    ticket, keeper = opened(new_ticket, services, session)
    promise = keeper.followup(ticket, at(TUE, 14), at(TUE, 10))
    assert promise.target == "followup"
    assert promise.due_at == at(TUE, 14)
    assert promise.risk_at == at(TUE, 13)      # 75% of the way
    again = keeper.followup(ticket, at(TUE, 16), at(TUE, 11))
    assert [c.id for c in keeper.running(ticket, "followup")] == [again.id]
    assert again.cycle == 1
