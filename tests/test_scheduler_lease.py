"""One scheduler at a time: the ``scheduler`` lease (workflow.desk.lease) and the period
claim that lets each duty run once per ``scan_interval`` whoever holds the lease."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from postdesk.workflow.desk.lease import claim_period, lease_state, take
from postdesk.workflow.rules.clock import ManualClock
from tests.support import backend, config_text, wait_for

PERIOD = timedelta(seconds=10)


@pytest.fixture
def clock_and_services(make_desk: Any) -> tuple[ManualClock, Any]:
    clock = ManualClock(datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    desk = make_desk(smtp=False, workers=False, clock=clock)
    return clock, desk.app.services


@pytest.mark.backends("sqlite")
def test_a_second_holder_is_refused_while_the_lease_is_live(clock_and_services: Any) -> None:
    clock, services = clock_and_services
    assert take(services, "scheduler", "a:1", PERIOD)
    assert not take(services, "scheduler", "b:2", PERIOD)
    clock.advance(timedelta(seconds=9))
    assert take(services, "scheduler", "a:1", PERIOD)       # the holder renews
    clock.advance(timedelta(seconds=9))
    assert not take(services, "scheduler", "b:2", PERIOD)   # renewed: still a's
    state = lease_state(services, "scheduler")
    assert state is not None and state.holder == "a:1" and state.live


@pytest.mark.backends("sqlite")
def test_an_expired_lease_passes_to_the_next_taker(clock_and_services: Any) -> None:
    clock, services = clock_and_services
    assert take(services, "scheduler", "a:1", PERIOD)
    clock.advance(PERIOD)
    assert take(services, "scheduler", "b:2", PERIOD)
    assert not take(services, "scheduler", "a:1", PERIOD)   # the old holder is out
    assert lease_state(services, "scheduler").holder == "b:2"


@pytest.mark.backends("sqlite")
def test_a_period_is_claimed_once_whoever_asks(clock_and_services: Any) -> None:
    clock, services = clock_and_services
    interval = timedelta(seconds=60)
    assert claim_period(services, "scheduler:period", "a:1", interval)
    assert not claim_period(services, "scheduler:period", "b:2", interval)
    clock.advance(timedelta(seconds=59))
    assert not claim_period(services, "scheduler:period", "a:1", interval)
    clock.advance(timedelta(seconds=1))
    assert claim_period(services, "scheduler:period", "b:2", interval)
    assert not claim_period(services, "scheduler:period", "a:1", interval)


# --- two real `postdesk scheduler` processes -------------------------------------------

LEASE_SECONDS = 3
SCAN_SECONDS = 2
LINE = re.compile(r"^(\S+ \S+) .*?(lease scheduler taken by|scheduler duties run by) (\S+)")


def _events(log: Path) -> list[tuple[datetime, str, str]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            events.append((when, "taken" if "taken" in m.group(2) else "ran", m.group(3)))
    return events


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.serial
def test_two_scheduler_processes_one_leads_and_the_spare_takes_over_after_kill_9(
        tmp_path: Path) -> None:
    with backend("postgres-redis", tmp_path) as be:
        config = tmp_path / "postdesk.toml"
        config.write_text(config_text(
            be, tmp_path / "data",
            extra=f'lease_period = "{LEASE_SECONDS}s"\n').replace(
                'scan_interval = "1s"', f'scan_interval = "{SCAN_SECONDS}s"'))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "POSTDESK_CONFIG": str(config)}
        cli = [sys.executable, "-m", "postdesk.cli"]
        subprocess.run([*cli, "db", "upgrade"], env=env, check=True, timeout=120,
                       capture_output=True)
        logs = [tmp_path / "scheduler-a.log", tmp_path / "scheduler-b.log"]
        procs = []
        for log in logs:
            with open(log, "wb") as out:
                procs.append(subprocess.Popen([*cli, "scheduler"], env=env, stdout=out,
                                              stderr=subprocess.STDOUT))
                # the first one started takes the lease; the second is the spare
                wait_for(lambda lg=log: "running" in lg.read_text(), 60, what="start")
        try:
            first = wait_for(lambda: [i for i, lg in enumerate(logs)
                                      if any(e[1] == "ran" for e in _events(lg))],
                             60, what="a scheduler running its duties")
            assert len(first) == 1, "both schedulers ran duties"
            holder, spare = first[0], 1 - first[0]
            wait_for(lambda: sum(e[1] == "ran" for e in _events(logs[holder])) >= 3, 60,
                     what="three periods run by the holder")
            procs[holder].send_signal(signal.SIGKILL)
            killed_at = datetime.now()
            procs[holder].wait(timeout=30)
            wait_for(lambda: any(e[1] == "taken" for e in _events(logs[spare])), 60,
                     what="the spare taking the lease")
            wait_for(lambda: sum(e[1] == "ran" for e in _events(logs[spare])) >= 3, 60,
                     what="three periods run by the spare")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
        held = _events(logs[holder])
        taken_over = next(e[0] for e in _events(logs[spare]) if e[1] == "taken")
        runs = sorted(e[0] for lg in logs for e in _events(lg) if e[1] == "ran")
        gaps = [(b - a).total_seconds() for a, b in pairwise(runs)]
        takeover = (taken_over - killed_at).total_seconds()
        print(f"holder ran {sum(e[1] == 'ran' for e in held)} periods, spare took over "
              f"{takeover:.1f}s after kill -9 (lease {LEASE_SECONDS}s); "
              f"gaps between duty runs: {[round(g, 2) for g in gaps]}")
        assert not any(e[1] == "ran" for e in _events(logs[spare]) if e[0] < killed_at)
        assert 0 < takeover <= 2 * LEASE_SECONDS
        # each duty once per period: never two runs in one scan interval
        assert min(gaps) >= SCAN_SECONDS - 0.05
