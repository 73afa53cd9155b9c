"""Named leases in the database: one scheduler at a time, and each duty once per period.

A lease row (``leases``: name, holder, expires_at) belongs to ``holder`` until
``expires_at``. Taking or renewing it is one conditional UPDATE (mine already, or
expired), or an INSERT when the row does not exist yet; a lost INSERT race is a refusal.
Nothing here waits or loops: ``LeaseKeeper`` renews on a thread of its own, so a long
duty never lets the lease lapse under the process that holds it.

Instants come from the injected clock of ``Services``; hosts sharing a lease must keep
their clocks in step (NTP) — skew shortens or lengthens a takeover by the same amount."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from postdesk.storage.models import Lease
from postdesk.workflow.desk.services import Services

log = logging.getLogger("postdesk.lease")


SCHEDULER_LEASE = "scheduler"   # the one lease the scheduler duties run under


def default_holder() -> str:
    """``hostname:pid`` — names the process in ``postdesk status`` and in the logs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def take(services: Services, name: str, holder: str, period: timedelta) -> bool:
    """Take or renew lease ``name`` for ``period``; False while another holds it."""
    now = services.now()
    with services.sessions() as session, session.begin():
        taken = cast(CursorResult[Any], session.execute(
            update(Lease).where(Lease.name == name,
                                or_(Lease.holder == holder, Lease.expires_at <= now))
            .values(holder=holder, expires_at=now + period))).rowcount
        if taken or session.get(Lease, name) is not None:
            return bool(taken)
    return _insert(services, name, holder, now + period)


def claim_period(services: Services, name: str, holder: str, interval: timedelta) -> bool:
    """True once per ``interval`` across every process: the row ``name`` holds the next
    due instant, and only the caller that moves it forward may run the duty now."""
    now = services.now()
    with services.sessions() as session, session.begin():
        claimed = cast(CursorResult[Any], session.execute(
            update(Lease).where(Lease.name == name, Lease.expires_at <= now)
            .values(holder=holder, expires_at=now + interval))).rowcount
        if claimed or session.get(Lease, name) is not None:
            return bool(claimed)
    return _insert(services, name, holder, now + interval)


def give_up(services: Services, name: str, holder: str) -> None:
    """Release lease ``name`` if ``holder`` has it, so a spare takes over at once."""
    with services.sessions() as session, session.begin():
        session.execute(update(Lease).where(Lease.name == name, Lease.holder == holder)
                        .values(expires_at=services.now()))


@dataclass(frozen=True)
class LeaseState:
    name: str
    holder: str
    expires_at: datetime
    live: bool


def lease_state(services: Services, name: str) -> LeaseState | None:
    """Who holds lease ``name`` and until when (``postdesk status`` shows it)."""
    with services.sessions() as session:
        row = session.scalar(select(Lease).where(Lease.name == name))
        if row is None:
            return None
        return LeaseState(row.name, row.holder, row.expires_at,
                          live=row.expires_at > services.now())


def _insert(services: Services, name: str, holder: str, expires_at: datetime) -> bool:
    try:
        with services.sessions() as session, session.begin():
            session.add(Lease(name=name, holder=holder, expires_at=expires_at))
    except IntegrityError:      # another process inserted it first: theirs
        return False
    return True


class LeaseKeeper:
    """Keeps trying to take (then renew) lease ``name`` every ``period / 3`` on a daemon
    thread. ``held()`` is this process's belief: true until one period after the start of
    its last successful renewal, so it turns false before the row expires for others."""

    def __init__(self, services: Services, name: str, holder: str, period: timedelta):
        self.services, self.name, self.holder = services, name, holder
        self.period = period
        self.renew_every = period.total_seconds() / 3
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def renew(self) -> bool:
        started = time.monotonic()
        was_held = self.held()
        try:
            ok = take(self.services, self.name, self.holder, self.period)
        except DBAPIError as exc:   # database away: keep the belief until it runs out
            log.warning("lease %s: could not renew: %s", self.name, exc)
            return self.held()
        if ok:
            self._valid_until = started + self.period.total_seconds()
            if not was_held:
                log.info("lease %s taken by %s", self.name, self.holder)
        elif was_held:
            self._valid_until = 0.0
            log.warning("lease %s lost by %s", self.name, self.holder)
        return ok

    def start(self) -> None:
        self.renew()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.renew_every):
            self.renew()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self.held():
            self._valid_until = 0.0
            try:
                give_up(self.services, self.name, self.holder)
            except DBAPIError as exc:
                log.warning("lease %s: could not release: %s", self.name, exc)
