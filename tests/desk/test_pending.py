"""desk.pending alone: reminders and auto-resolve on business time, once per wait."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Outbox
from postdesk.workflow.desk import pending
from tests.desk.doubles import RecordedDispatch


def test_business_time_not_wall_time_decides_the_reminder(
        session: Session, services, new_ticket, clock) -> None:
    # Tuesday 10:00 + 3 business days on the office calendar = Friday 10:00.
    ticket = new_ticket(status="pending", paused_since=clock.now())
    session.commit()
    dispatch = RecordedDispatch()
    assert pending.run(services, dispatch, clock.now() + timedelta(days=2, hours=23)) \
        .reminded == 0
    assert pending.run(services, dispatch, clock.now() + timedelta(days=3)).reminded == 1
    assert pending.run(services, dispatch, clock.now() + timedelta(days=3, hours=1)) \
        .reminded == 0
    [row] = session.scalars(select(Outbox).where(Outbox.template == "pending_reminder"))
    assert row.to == [ticket.requester_email] and dispatch.outbox_ids == [row.id]


def test_a_ticket_past_the_close_setting_is_resolved_without_a_reminder_first(
        session: Session, services, new_ticket, clock) -> None:
    ticket = new_ticket(status="pending", paused_since=clock.now())
    session.commit()
    result = pending.run(services, RecordedDispatch(), clock.now() + timedelta(days=20))
    assert (result.reminded, result.resolved) == (0, 1)
    session.refresh(ticket)
    assert ticket.status == "resolved"
