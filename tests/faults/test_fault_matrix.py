"""The fault matrix: the production shape (`postdesk smtp`, two `postdesk worker`,
`postdesk scheduler`) on a private PostgreSQL and a private Redis, sending to an aiosmtpd
sink, through a worker SIGKILL, a PostgreSQL outage, a Redis crash, a smarthost that
refuses, a smarthost that answers QUIT badly, the same burst twice, and a scheduler
killed before a breach is due. Each scenario prints its counts and checks exactly once:
every accepted email in one final state, one ticket message per Message-ID, one
acknowledgement per new ticket received once by the sink, each alert once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.faults.deployment import Deployment, burst_emails, make_template
from tests.faults.servers import PrivatePostgres, PrivateRedis
from tests.smarthost import Sink
from tests.support import make_email, wait_for

# One scenario at a time, on one xdist worker: each runs a whole deployment (four
# processes) through its fault, and the module's private servers start once.
pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.serial]

BURST = 30


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    pg = PrivatePostgres()
    redis = PrivateRedis()
    try:
        pg.start()
        redis.start()
        make_template(pg.url)
        yield pg, redis
    finally:
        redis.close()
        pg.close()


@pytest.fixture
def deploy(servers: tuple[PrivatePostgres, PrivateRedis], tmp_path: Path
           ) -> Iterator[Any]:
    made: list[Deployment] = []

    def factory(sink: Sink | None = None, **kw: Any) -> Deployment:
        pg, redis = servers
        d = Deployment(tmp_path, pg.url, redis.url, sink or Sink(), **kw)
        made.append(d)
        d.start_all()
        return d

    yield factory
    for d in made:
        d.close()


class Burst(threading.Thread):
    """The burst on a thread, so a fault can strike in the middle of it."""

    def __init__(self, d: Deployment, emails: list[bytes], senders: list[str]):
        super().__init__(daemon=True)
        self.d, self.emails, self.senders = d, emails, senders
        self.given = -1
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.given = self.d.burst(self.emails, self.senders)
        except BaseException as exc:   # re-raised by finish()
            self.error = exc

    def finish(self) -> int:
        self.join(timeout=300)
        if self.error:
            raise self.error
        return self.given


def raw_count(d: Deployment) -> int:
    try:
        with d.engine.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM raw_messages")) or 0)
    except Exception:
        return 0


def check(d: Deployment, scenario: str, given: int, expected: int,
          distinct: int | None = None, *, killed_at: float | None = None) -> None:
    """``expected`` 250s were given for ``distinct`` different emails (default: each
    email sent once); ``killed_at``: when a worker was SIGKILLed."""
    d.wait_settled(180)
    counts = d.counts(given)
    print(counts.report(scenario))
    assert given == expected
    counts.assert_exactly_once(expected if distinct is None else distinct,
                               killed_at=killed_at, send_claim_s=d.send_claim_s,
                               worker_threads=d.worker_threads)


def test_worker_sigkill_mid_burst(deploy: Any) -> None:
    d = deploy()
    emails, senders = burst_emails(BURST, "kill")
    burst = Burst(d, emails, senders)
    burst.start()
    wait_for(lambda: raw_count(d) >= BURST // 3, 120, 0.05, what="a third of the burst in")
    d.kill("worker0")
    killed_at = time.monotonic()
    d.start("worker0-again", "worker")
    check(d, "worker SIGKILL mid-burst", burst.finish(), BURST, killed_at=killed_at)


def test_worker_killed_as_the_smarthost_stores_its_email_sends_it_again_after_the_claim(
        deploy: Any) -> None:
    """The one window docs/faults.md names, hit on purpose: the smarthost has the email,
    the worker that sent it dies before it hears the 250. The email goes again, with its
    Message-ID, once its claim expires; the other email of its send job goes once."""
    killed_at: list[float] = []
    deployed: list[Deployment] = []

    def kill_the_sender(email: bytes) -> None:
        # The first email about the burst's one (the scheduler may send others first).
        if b"window request 0" in email and deployed and not killed_at:
            deployed[0].kill("worker0")
            killed_at.append(time.monotonic())

    d = deploy(Sink(on_stored=kill_the_sender), workers=1)
    deployed.append(d)
    given = d.burst(*burst_emails(1, "window"))
    wait_for(lambda: killed_at, 120, 0.05, what="the first email stored by the smarthost")
    d.start("worker0-again", "worker")
    check(d, "worker killed as the smarthost stores its email", given, 1,
          killed_at=killed_at[0])
    [(message_id, arrivals, claims)] = d.counts(given).copies
    assert arrivals[1] - arrivals[0] >= d.send_claim_s


def test_postgres_stopped_15s_mid_burst(deploy: Any,
                                        servers: tuple[PrivatePostgres, Any]) -> None:
    pg = servers[0]
    d = deploy()
    emails, senders = burst_emails(BURST, "pgdown")
    burst = Burst(d, emails, senders)
    burst.start()
    wait_for(lambda: raw_count(d) >= BURST // 3, 120, 0.05, what="a third of the burst in")
    pg.stop()
    try:
        time.sleep(15)   # the outage itself, not a wait for a condition
    finally:
        pg.start()
    check(d, "PostgreSQL stopped 15 s mid-burst", burst.finish(), BURST)


def test_redis_killed_30s_mid_burst(deploy: Any, servers: tuple[Any, PrivateRedis]) -> None:
    redis = servers[1]
    d = deploy()
    emails, senders = burst_emails(BURST, "redisdown")
    burst = Burst(d, emails, senders)
    burst.start()
    wait_for(lambda: raw_count(d) >= BURST // 3, 120, 0.05, what="a third of the burst in")
    redis.kill()
    try:
        time.sleep(30)   # the outage itself
    finally:
        redis.start()
    check(d, "Redis killed 30 s mid-burst", burst.finish(), BURST)


def test_smarthost_refuses_the_first_50_emails(deploy: Any) -> None:
    sink = Sink(refuse_first=50)
    d = deploy(sink)
    emails, senders = burst_emails(BURST, "refused")
    given = d.burst(emails, senders)
    check(d, "smarthost 451 to the first 50", given, BURST)
    assert sink.refused == 50


def test_smarthost_answers_quit_with_451_then_554_after_accepting_data(deploy: Any) -> None:
    sink = Sink(quit_reply="451 4.3.0 Local error in processing")
    d = deploy(sink)
    emails, senders = burst_emails(20, "quit")
    given = d.burst(emails[:10], senders[:10])
    d.wait_settled(180)
    sink.quit_reply = "554 5.0.0 Transaction failed"
    given += d.burst(emails[10:], senders[10:])
    check(d, "QUIT answered 451, then 554", given, 20)


def test_the_same_burst_twice(deploy: Any) -> None:
    d = deploy()
    emails, senders = burst_emails(BURST, "twice")
    given = d.burst(emails, senders)
    d.wait_settled(180)
    given += d.burst(emails, senders)
    check(d, "the same burst twice", given, 2 * BURST, distinct=BURST)


FAST_PLAN = """
[plans.fast]
calendar = "always"
first_response = { P1 = "20s", P2 = "20s", P3 = "20s" }
monthly_allowance = "2h"
rollover_cap = "4h"

[[orgs]]
slug = "fastco"
name = "Fast Co"
plan = "fast"
domains = ["fast.example"]
"""


def test_two_schedulers_one_killed_before_a_breach_is_due(deploy: Any) -> None:
    d = deploy(extra=FAST_PLAN)
    d.start("scheduler2", "scheduler")
    for i in range(3):
        d.burst([make_email(sender=f"ops{i}@fast.example", subject=f"Site down {i}",
                            message_id=f"<breach-{i}@fast.example>").as_bytes()],
                [f"ops{i}@fast.example"])
    wait_for(lambda: d.counts(3).tickets == 3 and d.settled(), 120, 0.5,
             what="three tickets on a 20 s first-response target")

    def holder() -> str | None:
        with d.engine.connect() as conn:
            return conn.scalar(text("SELECT holder FROM leases WHERE name = 'scheduler'"))

    held_by = wait_for(holder, 60, 0.2, what="a scheduler holding the lease")
    pid = int(held_by.rsplit(":", 1)[1])
    name = next(n for n, p in d.procs.items() if p.pid == pid)
    d.kill(name)   # before the breach (20 s after each ticket opened) is due

    def breached() -> bool:
        return sum(1 for (template, _, _) in d.counts(3).alerts
                   if template == "sla_breached") >= 3 and d.settled()

    wait_for(breached, 120, 0.5, what="the breach alerts, from the surviving scheduler")
    time.sleep(3)   # more periods of the survivor: a doubled alert would show now
    d.wait_settled(60)
    counts = d.counts(3)
    survivor = "scheduler2" if name == "scheduler" else "scheduler"
    print(counts.report("two schedulers, the holder killed before a breach"),
          f"; killed {name}, survivor {survivor} took over: "
          f"{'lease scheduler taken' in d.log(survivor)}")
    assert holder() != held_by
    assert "lease scheduler taken" in d.log(survivor)
    counts.assert_exactly_once(3)
    assert {t for (t, _, _) in counts.alerts} >= {"sla_breached"}
