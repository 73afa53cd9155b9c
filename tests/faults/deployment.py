"""The production shape for the fault matrix: `postdesk smtp`, several `postdesk worker`
processes and `postdesk scheduler`, on the private PostgreSQL and Redis, sending through
an aiosmtpd sink (tests.smarthost) — plus the burst that drives it and the counts every
scenario prints and checks."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, text

from postdesk.storage.migrate import upgrade
from tests.smarthost import Sink, Smarthost
from tests.support import (
    WORKER_THREADS,
    Backend,
    config_text,
    free_port,
    make_email,
    wait_for,
)

POSTDESK = [sys.executable, "-m", "postdesk.cli"]
TEMPLATE_DB = "pdfault_template"


def make_template(pg_url: str) -> None:
    """Migrate one database to copy for every scenario (CREATE DATABASE ... TEMPLATE), so
    each scenario starts on the current schema without running Alembic again."""
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    engine = create_engine(pg_url.rsplit("/", 1)[0] + "/" + TEMPLATE_DB)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


class Deployment:
    def __init__(self, tmp_path: Path, pg_url: str, redis_url: str, sink: Sink, *,
                 extra: str = "", workers: int = 2):
        admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
        self.db_name = f"pdfault_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}" TEMPLATE "{TEMPLATE_DB}"')
        self.db_url = pg_url.rsplit("/", 1)[0] + "/" + self.db_name
        self.tmp = tmp_path
        self.sink = sink
        self.smarthost = Smarthost(sink).__enter__()
        self.smtp_port = free_port()
        self.send_claim_s = 20.0
        self.worker_threads = WORKER_THREADS
        be = Backend("postgres-redis", self.db_url, redis_url, f"pdf{uuid.uuid4().hex[:6]}")
        config = tmp_path / "postdesk.toml"
        config.write_text(config_text(
            be, tmp_path / "data", smtp_port=self.smtp_port,
            # A crash mid-send is retried after the claim: short here, so the scenario
            # settles in seconds rather than the default five minutes.
            desk_extra=f'send_claim = "{self.send_claim_s:.0f}s"\nflood_tickets_per_hour = 1000',
            extra='lease_period = "3s"\n' + extra + self.smarthost.config()))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "POSTDESK_CONFIG": str(config)}
        self.engine = create_engine(self.db_url, pool_pre_ping=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.n_workers = workers

    # --- processes -----------------------------------------------------------------------
    def start(self, name: str, *args: str) -> None:
        log = open(self.tmp / f"{name}.log", "ab")   # noqa: SIM115 - lives with the process
        self.procs[name] = subprocess.Popen([*POSTDESK, *args], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        self.start("smtp", "smtp")
        for i in range(self.n_workers):
            self.start(f"worker{i}", "worker")
        self.start("scheduler", "scheduler")
        try:
            wait_for(self._smtp_open, 60, 0.2, what="postdesk smtp listening")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{self.log('smtp')[-3000:]}") from None
        # The faults strike a running deployment: a worker still starting when PostgreSQL
        # is stopped exits 2 (its start-up cannot reach the database; a supervisor would
        # restart it, nothing here does), which is not the fault under test.
        for name in self.procs:
            if name != "smtp":
                wait_for(lambda name=name: self._running(name), 120, 0.2,
                         what=f"postdesk {name} running")

    def _running(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise AssertionError(f"postdesk {name} ended ({proc.returncode}):\n"
                                 f"{self.log(name)[-3000:]}")
        return "running; Ctrl-C to stop" in self.log(name)

    def _smtp_open(self) -> bool:
        door = self.procs["smtp"]
        if door.poll() is not None:   # it ended: say why, now
            raise AssertionError(f"postdesk smtp ended ({door.returncode}):\n"
                                 f"{self.log('smtp')[-3000:]}")
        try:
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=5) as smtp:
                return smtp.noop()[0] == 250
        except OSError:
            return False

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        # The counts are taken: a clean shutdown proves nothing here (test_cli_serve
        # covers it), so the processes are simply killed.
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        self.smarthost.__exit__(None, None, None)
        self.engine.dispose()

    # --- the burst -------------------------------------------------------------------------
    def burst(self, emails: list[bytes], senders: list[str], *, threads: int = 4,
              deadline: float = 150.0) -> int:
        """Send each email until it gets its 250, as an MTA would (4xx and dropped
        connections are retried); returns the number of 250s given."""
        given = 0
        lock = threading.Lock()

        def send(pair: tuple[bytes, str]) -> None:
            nonlocal given
            raw, sender = pair
            stop = time.monotonic() + deadline
            while True:
                try:
                    with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as smtp:
                        smtp.sendmail(sender, ["support@desk.example"], raw)
                    with lock:
                        given += 1
                    return
                except (OSError, smtplib.SMTPException):
                    if time.monotonic() > stop:
                        raise
                    time.sleep(0.5)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(send, zip(emails, senders, strict=True)))
        return given

    # --- the counts ------------------------------------------------------------------------
    def settled(self) -> bool:
        with self.engine.connect() as conn:
            busy = conn.scalar(text(
                "SELECT (SELECT count(*) FROM raw_messages WHERE status = 'pending') + "
                "(SELECT count(*) FROM outbox WHERE status IN ('draft','queued','sending'))"))
        return busy == 0

    def wait_settled(self, timeout: float = 120.0) -> None:
        try:
            wait_for(self.settled, timeout, 0.5, what="every email processed and every "
                                                      "outbox email sent")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.unsettled()}") from None

    def unsettled(self) -> str:
        """What a scenario that did not settle left behind: the rows still in flight,
        whether each process still runs, and the end of each one's log."""
        with self.engine.connect() as conn:
            raws = conn.execute(text(
                "SELECT id, status, received_at FROM raw_messages "
                "WHERE status = 'pending' ORDER BY id")).all()
            outbox = conn.execute(text(
                "SELECT id, template, status, attempts, claimed_until, last_error FROM outbox "
                "WHERE status IN ('draft','queued','sending') ORDER BY id")).all()
        lines = [f"pending raw messages: {[tuple(r) for r in raws]}",
                 f"outbox in flight: {[tuple(r) for r in outbox]}"]
        for name, proc in self.procs.items():
            lines.append(f"--- {name} (exit {proc.poll()}), the end of its log:\n"
                         f"{self.log(name)[-4000:]}")
        return "\n".join(lines)

    def counts(self, given: int) -> Counts:
        with self.engine.connect() as conn:
            def rows(sql: str) -> list[tuple]:
                return [tuple(r) for r in conn.execute(text(sql))]
            raw_states = dict(rows("SELECT status, count(*) FROM raw_messages GROUP BY status"))
            tickets = conn.scalar(text("SELECT count(*) FROM tickets"))
            doubled_messages = rows(
                "SELECT message_id, count(*) FROM messages WHERE direction = 'in' "
                "GROUP BY message_id HAVING count(*) > 1")
            outbox = rows('SELECT message_id, template, status, ticket_id, CAST("to" AS TEXT), '
                          'attempts FROM outbox')
        acks = [o for o in outbox if o[1] == "acknowledgement"]
        message_ids = self.sink.message_ids()
        received = Counter(message_ids)
        attempts = {o[0]: o[5] for o in outbox}
        copies = [(mid, [at for m, at in zip(message_ids, self.sink.arrivals, strict=True)
                         if m == mid], attempts.get(mid))
                  for mid, n in received.items() if n > 1]
        ack_received = [received[o[0]] for o in acks]
        return Counts(
            given=given, raw_messages=sum(raw_states.values()), raw_states=raw_states,
            tickets=tickets, doubled_messages=doubled_messages, acks_stored=len(acks),
            acks_per_ticket=Counter(o[3] for o in acks),
            acks_received_total=sum(ack_received),
            acks_received_distinct=sum(1 for n in ack_received if n),
            outbox_states=Counter(o[2] for o in outbox),
            sink_total=sum(received.values()), sink_distinct=len(received), copies=copies,
            unsent=[o for o in outbox if o[2] == "sent" and not received[o[0]]],
            alerts=Counter((o[1], o[3], o[4]) for o in outbox if o[1].startswith("sla_")))


@dataclass
class Counts:
    given: int
    raw_messages: int
    raw_states: dict[str, int]
    tickets: int
    doubled_messages: list[tuple]
    acks_stored: int
    acks_per_ticket: Counter[int]
    acks_received_total: int
    acks_received_distinct: int
    outbox_states: Counter[str]
    sink_total: int
    sink_distinct: int
    # each email the sink received more than once: its Message-ID, when each copy arrived
    # (time.monotonic) and how often its outbox row was claimed
    copies: list[tuple[str, list[float], int | None]]
    unsent: list[tuple]
    alerts: Counter[tuple[str, int, str]]

    def report(self, scenario: str) -> str:
        return (f"[{scenario}] 250s given {self.given}; raw messages {self.raw_messages} "
                f"{dict(self.raw_states)}; tickets {self.tickets}; acknowledgements stored "
                f"{self.acks_stored}, received by the sink {self.acks_received_total} "
                f"(distinct {self.acks_received_distinct}); all emails received "
                f"{self.sink_total} (distinct {self.sink_distinct}, a second copy "
                f"{len(self.copies)}); outbox "
                f"{dict(self.outbox_states)}; alerts {sum(self.alerts.values())}")

    def assert_exactly_once(self, expected_emails: int, *, killed_at: float | None = None,
                            send_claim_s: float = 0.0, worker_threads: int = 0) -> None:
        """Each email in one final state, each acknowledgement and alert received once.

        ``killed_at``: a worker was SIGKILLed then (time.monotonic). That leaves the one
        window in which an email can be received twice (docs/faults.md): the kill fell
        between the smarthost's 250 and the commit of ``sent``, and the email went again,
        with its Message-ID, once its claim expired. A copy is accepted only in that
        shape, and at most one per thread of the killed worker."""
        # every accepted email in exactly one final state
        assert self.raw_messages == expected_emails
        assert set(self.raw_states) == {"processed"}, self.raw_states
        # one ticket message per Message-ID
        assert self.doubled_messages == []
        assert self.tickets == expected_emails
        # one acknowledgement per new ticket, received exactly once by the sink
        assert self.acks_stored == self.tickets
        assert set(self.acks_per_ticket.values()) == {1}
        assert self.acks_received_distinct == self.acks_stored
        # nothing twice, nothing recorded sent that never arrived
        if killed_at is None:
            assert self.sink_total == self.sink_distinct, self.copies
            assert self.acks_received_total == self.acks_received_distinct
        else:
            assert len(self.copies) <= worker_threads, self.copies
            for message_id, arrivals, claims in self.copies:
                first, again = arrivals   # two copies, no more
                assert first <= killed_at, (message_id, arrivals, killed_at)
                assert again - first >= send_claim_s * 0.75, (message_id, arrivals)
                assert claims == 2, (message_id, claims)
        assert set(self.outbox_states) == {"sent"}, self.outbox_states
        assert self.unsent == []
        # each alert once
        assert set(self.alerts.values()) <= {1}, self.alerts


def burst_emails(n: int, tag: str) -> tuple[list[bytes], list[str]]:
    senders = [f"client{i}@client.example" for i in range(n)]
    emails = [make_email(sender=s, subject=f"{tag} request {i}: the checkout is broken",
                         message_id=f"<{tag}-{i}@client.example>").as_bytes(policy=SMTP_POLICY)
              for i, s in enumerate(senders)]
    return emails, senders
