"""`postdesk serve` runs its SMTP door in a process of its own (postdesk/door.py). Real
`postdesk serve` subprocesses, smtplib over STARTTLS with AUTH, SQLite, kill -9:

- a door killed mid-burst is started again, and every email answered 250 (a client
  retries the ones it was not, as an MTA does) is one ticket with one acknowledgement;
- an email the door committed but never handed over is processed by the sweeper;
- Ctrl-C (SIGINT to the process group) and SIGTERM stop the desk and its door cleanly;
- a door that cannot come back stops serve with a clear message and exit status 1;
- the door answers 250 while the desk database's write lock is held (it commits to its
  own spool), and emails left in the spool by a killed serve are processed on restart;
- a serve killed with kill -9 takes its door with it (the port is free for the restart);
- with two CPUs or more the door runs on one of its own and the desk's workers on the
  others."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from postdesk.door import WORKER_NICE, cpu_split
from postdesk.ingest.accept import Envelope, accept
from postdesk.ingest.spooled import spool_email
from postdesk.storage.blobs import BlobStore
from postdesk.storage.db import make_engine, make_session_factory
from postdesk.storage.models import Outbox, RawMessage, Ticket
from postdesk.storage.spool import Spool
from tests.support import backend, config_text, free_port, make_email, wait_for

# `postdesk serve` subprocesses, each a minute or so: slow.
pytestmark = pytest.mark.slow

POSTDESK = [sys.executable, "-m", "postdesk.cli"]
SUPPORT = "support@desk.example"
LOGIN, PASSWORD = "mx-relay", "door-s3cret"
BURST = 40
LISTENING = re.compile(r"SMTP door process (\d+) listening")


@dataclass
class Desk:
    process: subprocess.Popen[str]
    log: Path
    port: int
    database_url: str
    data_dir: Path
    cert: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def door_pids(self) -> list[int]:
        """Every door process that has listened, in order."""
        return [int(pid) for pid in LISTENING.findall(self.text())]

    def wait_for_door(self, after: int | None = None) -> int:
        """The pid of the door listening now (a new one when ``after`` is given)."""
        def listening() -> int | None:
            pids = self.door_pids()
            return pids[-1] if pids and pids[-1] != after else None

        return wait_for(listening, 120, 0.1, what="the SMTP door to listen")

    def client(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        smtp.starttls(context=ssl.create_default_context(cafile=self.cert))
        smtp.login(LOGIN, PASSWORD)
        return smtp


@contextmanager
def serving(tmp_path: Path, certificate: tuple[str, str],
            before_start: Callable[[Path], None] | None = None) -> Iterator[Desk]:
    """`postdesk serve` on SQLite, its door with STARTTLS and AUTH required.
    ``before_start`` is given the data directory (made, owner only) before serve starts."""
    cert, key = certificate
    if before_start is not None:
        (tmp_path / "data").mkdir(mode=0o700)
        before_start(tmp_path / "data")
    with backend("sqlite", tmp_path) as be:
        port = free_port()
        config = tmp_path / "postdesk.toml"
        text = config_text(be, tmp_path / "data", smtp_port=port)
        text = text.replace(
            f"port = {port}\n",
            f'port = {port}\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
            'require_starttls = true\nauth_required = true\n'
            'auth_username_env = "PD_DOOR_LOGIN"\nauth_password_env = "PD_DOOR_PASSWORD"\n')
        config.write_text(text)
        env = {**os.environ, "POSTDESK_CONFIG": str(config), "PYTHONUNBUFFERED": "1",
               "PD_DOOR_LOGIN": LOGIN, "PD_DOOR_PASSWORD": PASSWORD}
        log = tmp_path / "serve.log"
        with log.open("w") as out:
            # A session of its own: a test can signal the process group, as a terminal's
            # Ctrl-C does.
            process = subprocess.Popen([*POSTDESK, "serve"], env=env, stdout=out, stderr=out,
                                       text=True, start_new_session=True)
        desk = Desk(process, log, port, be.database_url, tmp_path / "data", cert)
        try:
            desk.wait_for_door()
            yield desk
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=60)
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
            for pid in desk.door_pids():       # never leave a door behind a failed test
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def counts(database_url: str) -> tuple[int, int, int, list[str]]:
    """(raw messages, tickets, acknowledgements, statuses of the acknowledgements)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            raws = conn.scalar(select(func.count()).select_from(RawMessage)) or 0
            tickets = conn.scalar(select(func.count()).select_from(Ticket)) or 0
            acks = list(conn.scalars(select(Outbox.status)
                                     .where(Outbox.template == "acknowledgement")))
    finally:
        engine.dispose()
    return raws, tickets, len(acks), acks


@dataclass
class Sender:
    """Sends each email until it is answered 250, reconnecting after any failure (a
    door killed mid-session): what a sending MTA does."""

    desk: Desk
    emails: list[bytes]
    answered: list[int] = field(default_factory=list)
    failures: int = 0

    def run(self) -> None:
        smtp: smtplib.SMTP | None = None
        deadline = time.monotonic() + 300
        for i, raw in enumerate(self.emails):
            while True:
                assert time.monotonic() < deadline, f"email {i} never answered 250"
                try:
                    if smtp is None:
                        smtp = self.desk.client()
                    smtp.sendmail(f"user{i}@client.example", [SUPPORT], raw)
                    self.answered.append(i)
                    break
                except (OSError, smtplib.SMTPException):
                    self.failures += 1
                    with suppress(Exception):
                        if smtp is not None:
                            smtp.close()
                    smtp = None
                    time.sleep(0.1)
        if smtp is not None:
            with suppress(Exception):
                smtp.quit()



def bound(sock: socket.socket, port: int) -> bool:
    """Whether ``sock`` could be bound to ``port`` on the loopback (now it is)."""
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True

def test_a_door_killed_mid_burst_is_started_again_and_every_email_is_one_ticket_once(
        tmp_path: Path, certificate: tuple[str, str]) -> None:
    emails = [make_email(sender=f"user{i}@client.example", subject=f"Burst {i}").as_bytes()
              for i in range(BURST)]
    with serving(tmp_path, certificate) as desk:
        first = desk.door_pids()[-1]
        sender = Sender(desk, emails)
        thread = threading.Thread(target=sender.run, daemon=True)
        thread.start()
        wait_for(lambda: len(sender.answered) >= BURST // 3, 120, 0.05,
                 what="a third of the burst answered 250")
        os.kill(first, signal.SIGKILL)
        answered_before_kill = len(sender.answered)
        second = desk.wait_for_door(after=first)
        thread.join(timeout=300)
        assert not thread.is_alive()
        assert sorted(sender.answered) == list(range(BURST))

        def all_acknowledged() -> bool:
            raws, tickets, acks, statuses = counts(desk.database_url)
            return tickets == BURST and acks == BURST and set(statuses) == {"sent"}

        wait_for(all_acknowledged, 180, 0.2, what="every email processed and acknowledged")
        raws, tickets, acks, _ = counts(desk.database_url)
        assert (raws, tickets, acks) == (BURST, BURST, BURST)   # a retried email is one raw
        assert "ended unexpectedly (killed by SIGKILL): starting a new one" in desk.text()
        assert second != first and not alive(first)
        desk.process.send_signal(signal.SIGTERM)
        assert desk.process.wait(timeout=60) == 0
        wait_for(lambda: not alive(second), 30, 0.1, what="the door to stop with serve")
    log = desk.text()
    assert "Traceback" not in log
    maildir = desk.data_dir / "outbox" / "new"
    ack_files = [p for p in maildir.iterdir() if b"\r\nTo: user" in p.read_bytes()]
    assert len(ack_files) == BURST      # one file per acknowledgement, none twice
    print(f"\n{answered_before_kill}/{BURST} answered before the kill; "
          f"{sender.failures} failed attempts retried")


def test_mail_committed_but_never_handed_over_is_processed_by_the_sweeper(
        tmp_path: Path, certificate: tuple[str, str]) -> None:
    """The state a door killed between its commit and the hand-over leaves: a pending
    raw message nobody enqueued. The scheduler's sweeper finds it after sweep_grace
    (2 s here)."""
    with serving(tmp_path, certificate) as desk:
        engine = make_engine(desk.database_url)
        try:
            raw = make_email(sender="carol@client.example", subject="Lost hand-over")
            result = accept(make_session_factory(engine), BlobStore(desk.data_dir / "blobs"),
                            raw.as_bytes(), Envelope("carol@client.example", (SUPPORT,)),
                            "smtp", now=datetime.now(UTC), row_limit=256 * 1024)

            def processed() -> tuple[datetime, datetime] | None:
                with engine.connect() as conn:
                    row = conn.execute(select(RawMessage.received_at, RawMessage.processed_at,
                                              RawMessage.status)
                                       .where(RawMessage.id == result.raw_id)).one()
                return ((row.received_at, row.processed_at) if row.status == "processed"
                        else None)

            received, done = wait_for(processed, 120, 0.2, what="the sweeper to process it")
        finally:
            engine.dispose()
        # Nothing but the sweeper knew of it, and the sweeper waits out the grace period.
        assert done - received >= timedelta(seconds=2)
        wait_for(lambda: re.search(rf"inbound raw={result.raw_id} .*outcome=processed",
                                   desk.text()), 30, 0.1, what="its inbound log line")
        # Ctrl-C in a terminal: SIGINT to the whole process group, door included.
        door = desk.door_pids()[-1]
        os.killpg(desk.process.pid, signal.SIGINT)
        assert desk.process.wait(timeout=60) == 0
        wait_for(lambda: not alive(door), 30, 0.1, what="the door to stop with serve")
    assert "received SIGINT, shutting down" in desk.text()
    assert "ended unexpectedly" not in desk.text()


def test_a_door_that_cannot_come_back_stops_serve_with_a_clear_message(
        tmp_path: Path, certificate: tuple[str, str]) -> None:
    with serving(tmp_path, certificate) as desk:
        door = desk.door_pids()[-1]
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            os.kill(door, signal.SIGKILL)

            # Free once the killed door's last thread is gone (its pid reads as a zombie a
            # moment before that); the new door needs a second or more to start.
            wait_for(lambda: bound(squatter, desk.port), 30, 0.005,
                     what="the killed door's port")
            squatter.listen()
            code = desk.process.wait(timeout=180)
        finally:
            squatter.close()
    log = desk.text()
    assert code == 1
    assert f"smtp_in.port: 127.0.0.1:{desk.port} is already in use" in log
    assert "postdesk: the SMTP door process could not be started again" in log
    assert "Traceback" not in log


def test_a_serve_killed_with_sigkill_takes_its_door_with_it(
        tmp_path: Path, certificate: tuple[str, str]) -> None:
    with serving(tmp_path, certificate) as desk:
        door = desk.door_pids()[-1]
        desk.process.kill()
        desk.process.wait(timeout=30)
        wait_for(lambda: not alive(door), 60, 0.1, what="the door to notice and stop")

        def port_free() -> bool:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                return bound(probe, desk.port)

        wait_for(port_free, 30, 0.1, what="the port to be free for a restart")
    assert "the desk process is gone: the SMTP door stops" in desk.text()


def all_processed(desk: Desk, n: int) -> Callable[[], bool]:
    def check() -> bool:
        raws, tickets, acks, statuses = counts(desk.database_url)
        return (raws, tickets, acks) == (n, n, n) and set(statuses) == {"sent"}
    return check


def test_the_door_answers_250_while_the_desk_database_is_locked(
        tmp_path: Path, certificate: tuple[str, str]) -> None:
    """Accepting never waits for processing: with the desk database's write lock held (a
    long transaction, a backup), each email is committed to the door's spool and
    answered; the desk moves and processes them once the lock is free."""
    with serving(tmp_path, certificate) as desk:
        holder = sqlite3.connect(desk.database_url.removeprefix("sqlite:///"),
                                 isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            smtp = desk.client()
            replies = []
            for i in range(5):
                raw = make_email(sender=f"user{i}@client.example", subject=f"Locked {i}")
                smtp.mail(f"user{i}@client.example")
                smtp.rcpt(SUPPORT)
                replies.append(smtp.data(raw.as_bytes()))
            smtp.quit()
            # Still locked: the door wrote nothing into the desk database (read beside
            # the lock, as WAL lets a reader).
            assert holder.execute("SELECT count(*) FROM raw_messages").fetchone() == (0,)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert [code for code, _ in replies] == [250] * 5
        assert all(re.match(rb"2\.0\.0 OK: queued as spool-\d+$", text)
                   for _, text in replies), replies
        wait_for(all_processed(desk, 5), 180, 0.2, what="the five emails processed")
        assert Spool.of_desk(desk.data_dir).count() == 0
    assert "Traceback" not in desk.text()


def test_emails_a_killed_serve_left_in_its_spool_are_processed_when_it_starts_again(
        tmp_path: Path, certificate: tuple[str, str]) -> None:
    """What a ``kill -9`` of serve between the door's 250 and the desk's move leaves: emails
    in the spool only. The next serve moves them before its door listens."""
    def leave_in_spool(data_dir: Path) -> None:
        spool = Spool.of_desk(data_dir)
        try:
            for i in range(3):
                raw = make_email(sender=f"user{i}@client.example", subject=f"Spooled {i}")
                spool_email(spool, BlobStore.of_desk(data_dir), raw.as_bytes(),
                            Envelope(f"user{i}@client.example", (SUPPORT,)), "smtp",
                            now=datetime.now(UTC), row_limit=256 * 1024)
        finally:
            spool.close()

    with serving(tmp_path, certificate, before_start=leave_in_spool) as desk:
        wait_for(all_processed(desk, 3), 180, 0.2, what="the spooled emails processed")
        assert Spool.of_desk(desk.data_dir).count() == 0
    assert "Traceback" not in desk.text()


def threads(pid: int) -> list[int]:
    return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]


def nice_of(tid: int) -> int:
    return int(Path(f"/proc/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(sys.platform != "linux", reason="thread affinity is Linux's")
def test_the_door_has_a_cpu_of_its_own_and_the_desks_workers_run_on_the_others(
        tmp_path: Path, certificate: tuple[str, str]) -> None:
    """So a desk busy processing does not take the core the door's next 250 needs (on
    one CPU nothing is pinned)."""
    available = os.sched_getaffinity(0)
    workers_nice = min(19, os.nice(0) + WORKER_NICE)
    with serving(tmp_path, certificate) as desk:
        door = desk.door_pids()[-1]

        def workers() -> list[int] | None:
            found = [tid for tid in threads(desk.process.pid) if nice_of(tid) == workers_nice]
            return found if len(found) >= 4 else None   # desk.worker_threads, 4 by default

        worker_cpus = {frozenset(os.sched_getaffinity(tid))
                       for tid in wait_for(workers, 60, 0.1, what="the worker threads")}
        door_cpus = {frozenset(os.sched_getaffinity(tid)) for tid in threads(door)}
    split = cpu_split(available)
    if split is None:
        assert worker_cpus == door_cpus == {frozenset(available)}
    else:
        assert door_cpus == {split.door}
        assert worker_cpus == {split.desk}
