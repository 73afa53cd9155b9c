"""The scheduler: periodic jobs run every ``scan_interval``.

Each job is idempotent and safe to run in two scheduler processes at once (claims are
conditional UPDATEs), but only one runs them: ``run_forever`` acts only while it holds the
``scheduler`` lease (``workflow.desk.lease``), so a second scheduler is a hot spare that
takes over when the holder dies.

The sweepers are the safety net of "commit, then enqueue": whatever a dead process or a
broker outage left behind after the grace period is picked up again — pending raw mail,
outbox drafts never rendered, queued emails never sent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from postdesk.metrics import observe_duty
from postdesk.outbound.sender import stale_outbox_ids
from postdesk.status import record_duty_run
from postdesk.storage.models import RawMessage, RawStatus, Ticket
from postdesk.workflow.desk import breaches, digest, pending, statement
from postdesk.workflow.desk.lease import (
    SCHEDULER_LEASE,
    LeaseKeeper,
    claim_period,
    default_holder,
)
from postdesk.workflow.desk.outbox import release_drafts, stale_draft_ids
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.desk.sla_clocks import set_status

log = logging.getLogger("postdesk.scheduler")
# Lease names: who is in charge, and when the duties last ran (for ``postdesk status``).
SCHEDULER_PERIOD = "scheduler:period"


def sweep_pending_raw(services: Services, dispatch: Dispatch, older_than: timedelta,
                      limit: int = 1000) -> int:
    """Re-enqueue raw messages still pending after the grace period: their job was lost
    (broker down at accept time, in-process queue lost on restart)."""
    cutoff = services.now() - older_than
    with services.sessions() as session:
        ids = list(session.scalars(
            select(RawMessage.id).where(RawMessage.status == RawStatus.PENDING,
                                        RawMessage.received_at < cutoff)
            .order_by(RawMessage.id).limit(limit)))
    for raw_id in ids:
        dispatch.inbound(raw_id)
    return len(ids)


def sweep_drafts(services: Services, dispatch: Dispatch, older_than: timedelta) -> int:
    """Render and send drafts still unrendered after the grace period: the process that
    committed them died before ``release_drafts``. Rendering is a conditional UPDATE from
    ``draft``, so racing a slow original renders each draft once."""
    with services.sessions() as session:
        ids = stale_draft_ids(session, services.now() - older_than)
    release_drafts(services, dispatch, ids)
    return len(ids)


def sweep_outbox(services: Services, dispatch: Dispatch, older_than: timedelta) -> int:
    """Re-enqueue queued emails whose send job was lost; the sender's claim makes a
    duplicate job harmless."""
    ids = stale_outbox_ids(services, older_than)
    for outbox_id in ids:
        dispatch.outbox(outbox_id)
    return len(ids)


def close_quiet_tickets(services: Services) -> int:
    """Resolved tickets with no activity for ``close_after_days`` are closed."""
    now = services.now()
    cutoff = now - timedelta(days=services.config.desk.close_after_days)
    closed = 0
    with services.sessions() as session, session.begin():
        keeper = services.clocks(session)
        for ticket in session.scalars(
                select(Ticket).where(Ticket.status == "resolved", Ticket.updated_at < cutoff)
                .with_for_update(skip_locked=True).limit(500)):
            set_status(keeper, ticket, "closed", now, "scheduler")
            closed += 1
    return closed


class Scheduler:
    def __init__(self, services: Services, dispatch: Dispatch, holder: str | None = None):
        self.services = services
        self.holder = holder or default_holder()
        config = services.config
        grace = config.scheduler.sweep_grace.as_timedelta()
        self.jobs: list[tuple[str, Callable[[], object]]] = [
            ("sweep_pending_raw", lambda: sweep_pending_raw(services, dispatch, grace)),
            ("sweep_outbox", lambda: sweep_outbox(services, dispatch, grace)),
            # After the outbox sweep: a draft keeps its old created_at once rendered, so
            # the other order would hand each swept draft to the sender twice in one run.
            ("sweep_drafts", lambda: sweep_drafts(services, dispatch, grace)),
            ("sla_scan", lambda: breaches.scan(services, dispatch)),
            ("close_quiet_tickets", lambda: close_quiet_tickets(services)),
            ("digests", lambda: digest.due_digests(services, dispatch)),
            ("statements", lambda: statement.due_statements(services, dispatch)),
            ("pending_tickets", lambda: pending.run(services, dispatch)),
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_job(self, name: str, fn: Callable[[], object]) -> None:
        self.jobs.append((name, fn))

    def run_once(self) -> dict[str, object]:
        results: dict[str, object] = {}
        for name, job in self.jobs:
            started, error = self.services.now(), None
            try:
                results[name] = job()
            except Exception as exc:  # one failing job must not stop the others
                log.exception("scheduler job %s failed", name)
                results[name] = error = exc
            record_duty_run(self.services.sessions, name, started, self.services.now(), error)
            observe_duty(name, results[name])
        return results

    def run_forever(self) -> None:
        """Run the duties only while this process holds the ``scheduler`` lease, and
        each run only once per ``scan_interval`` across all schedulers (a spare that
        takes over does not repeat the period the dead holder already ran)."""
        config = self.services.config.scheduler
        interval = config.scan_interval.as_timedelta()
        keeper = LeaseKeeper(self.services, SCHEDULER_LEASE, self.holder,
                             config.lease_period.as_timedelta())
        keeper.start()
        try:
            while not self._stop.is_set():
                if keeper.held() and self._claim_period(interval):
                    log.info("scheduler duties run by %s", self.holder)
                    self.run_once()
                self._stop.wait(min(interval.total_seconds(), keeper.renew_every))
        finally:
            keeper.stop()

    def _claim_period(self, interval: timedelta) -> bool:
        try:
            return claim_period(self.services, SCHEDULER_PERIOD, self.holder, interval)
        except DBAPIError as exc:   # database away: try again at the next tick
            log.warning("scheduler: could not claim this period: %s", exc)
            return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

