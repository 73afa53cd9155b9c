"""The scheduler sends digests on the digest calendar: two schedulers (a hot spare) with an
injected clock, a weekly digest, the test desk's default calendar (Monday-Friday, UTC)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.scheduler import Scheduler
from postdesk.storage.models import Outbox
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.clock import ManualClock
from tests.desk.doubles import RecordedDispatch


def digests(session: Session) -> list[str]:
    return list(session.scalars(select(Outbox.dedupe_key).where(
        Outbox.dedupe_key.startswith("digest:")).order_by(Outbox.id)))


def test_two_schedulers_started_on_a_sunday_send_one_weekly_digest_on_monday_only(
        session: Session, services: Services, clock: ManualClock) -> None:
    weekly = services.config.model_copy(update={
        "digest": services.config.digest.model_copy(update={"period": "weekly"})})
    services = dataclasses.replace(services, config=weekly)
    dispatch = RecordedDispatch()
    schedulers = [Scheduler(services, dispatch), Scheduler(services, dispatch)]

    def run_both_at(when: datetime) -> None:
        clock.set(when)
        for scheduler in schedulers:
            results = scheduler.run_once()
            assert not isinstance(results["digests"], Exception), results["digests"]

    run_both_at(datetime(2026, 11, 29, 12, tzinfo=UTC))          # Sunday: first start
    assert digests(session) == []
    run_both_at(datetime(2026, 11, 30, 8, 29, tzinfo=UTC))        # Monday, before 08:30
    assert digests(session) == []
    run_both_at(datetime(2026, 11, 30, 8, 31, tzinfo=UTC))        # Monday, after 08:30
    assert digests(session) == ["digest:boss@agency.example:2026-11-30"]
    run_both_at(datetime(2026, 12, 1, 9, tzinfo=UTC))             # Tuesday
    run_both_at(datetime(2026, 12, 5, 9, tzinfo=UTC))             # Saturday
    assert digests(session) == ["digest:boss@agency.example:2026-11-30"]
    run_both_at(datetime(2026, 12, 7, 8, 30, tzinfo=UTC))         # next Monday
    assert digests(session)[-1] == "digest:boss@agency.example:2026-12-07"
    assert len(digests(session)) == 2
