"""The scheduler: periodic jobs run every ``scan_interval``.

Each job is idempotent and safe to run in two scheduler processes at once (claims are
conditional UPDATEs), so a second scheduler is a hot spare, not a hazard."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from postdesk.outbound.sender import stale_outbox_ids
from postdesk.storage.models import RawMessage, Ticket
from postdesk.workflow.desk import breaches, digest
from postdesk.workflow.desk.sla_clocks import set_status

if TYPE_CHECKING:
    from postdesk.app import App

log = logging.getLogger("postdesk.scheduler")


def sweep_pending_raw(app: App, older_than: timedelta, limit: int = 1000) -> int:
    """Re-enqueue raw messages still pending after the grace period: their job was lost
    (broker down at accept time, in-process queue lost on restart)."""
    cutoff = app.now() - older_than
    with app.sessions() as session:
        ids = list(session.scalars(
            select(RawMessage.id).where(RawMessage.status == "pending",
                                        RawMessage.received_at < cutoff)
            .order_by(RawMessage.id).limit(limit)))
    for raw_id in ids:
        app.enqueue_inbound(raw_id)
    return len(ids)


def sweep_outbox(app: App, older_than: timedelta) -> int:
    ids = stale_outbox_ids(app, older_than)
    for outbox_id in ids:
        app.enqueue_outbox(outbox_id)
    return len(ids)


def close_quiet_tickets(app: App) -> int:
    """Resolved tickets with no activity for ``close_after_days`` are closed."""
    cutoff = app.now() - timedelta(days=app.config.desk.close_after_days)
    closed = 0
    with app.sessions() as session, session.begin():
        keeper = app.keeper(session)
        for ticket in session.scalars(
                select(Ticket).where(Ticket.status == "resolved", Ticket.updated_at < cutoff)
                .with_for_update(skip_locked=True).limit(500)):
            set_status(keeper, ticket, "closed", app.now(), "scheduler")
            closed += 1
    return closed


class Scheduler:
    def __init__(self, app: App):
        self.app = app
        self.jobs: list[tuple[str, Callable[[], object]]] = [
            ("sweep_pending_raw",
             lambda: sweep_pending_raw(app, app.config.scheduler.sweep_grace.as_timedelta())),
            ("sweep_outbox",
             lambda: sweep_outbox(app, app.config.scheduler.sweep_grace.as_timedelta())),
            ("sla_scan", lambda: breaches.scan(app)),
            ("close_quiet_tickets", lambda: close_quiet_tickets(app)),
            ("digests", lambda: digest.due_digests(app)),
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_job(self, name: str, fn: Callable[[], object]) -> None:
        self.jobs.append((name, fn))

    def run_once(self) -> dict[str, object]:
        results: dict[str, object] = {}
        for name, job in self.jobs:
            try:
                results[name] = job()
            except Exception as exc:  # one failing job must not stop the others
                log.exception("scheduler job %s failed", name)
                results[name] = exc
        return results

    def run_forever(self) -> None:
        interval = self.app.config.scheduler.scan_interval.as_timedelta().total_seconds()
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
