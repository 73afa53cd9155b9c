"""Nothing lost, nothing twice, across kill -9 of `postdesk import`: the import is SIGKILLed
while it works through its batches (some accepted and processed, some accepted and still
pending, the rest not read yet), run again over the same mbox, and every email ends as
exactly one raw message, one ticket and one queued acknowledgement. The second test kills
it in the middle of a batch's record transaction and checks that nothing of that batch
was kept."""

from __future__ import annotations

import json
import mailbox
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from postdesk.storage.models import Event, Message, Outbox, RawMessage, Ticket
from tests.support import (
    Backend,
    backend,
    backend_param,
    config_text,
    make_email,
    wait_for,
)

# `postdesk import` subprocesses and a SIGKILL: slow.
pytestmark = pytest.mark.slow

POSTDESK = [sys.executable, "-m", "postdesk.cli"]
EMAILS = 300
KILL_AFTER_TICKETS = 15


@contextmanager
def desk_and_mbox(kind: str, tmp_path: Path, subject: str
                  ) -> Iterator[tuple[Backend, dict[str, str], Path]]:
    """A migrated desk of ``kind`` (its config in the environment for the CLI) and an mbox
    of EMAILS new-ticket emails, "{subject} {i}" from user{i}@client.example."""
    with backend(kind, tmp_path) as be:
        config = tmp_path / "postdesk.toml"
        config.write_text(config_text(be, tmp_path / "data"))
        env = {**os.environ, "POSTDESK_CONFIG": str(config)}
        subprocess.run([*POSTDESK, "db", "upgrade"], env=env, check=True,
                       capture_output=True, timeout=120)
        box_path = tmp_path / f"{subject.lower()}.mbox"
        box = mailbox.mbox(box_path)
        for i in range(EMAILS):
            box.add(make_email(sender=f"user{i}@client.example", subject=f"{subject} {i}",
                               message_id=f"<{subject.lower()}-{i}@client.example>"))
        box.close()
        yield be, env, box_path


@pytest.mark.parametrize("kind", [backend_param("sqlite"), backend_param("postgres-redis")])
def test_an_import_killed_mid_batch_and_run_again_makes_each_ticket_and_ack_once(
        kind: str, tmp_path: Path) -> None:
    with desk_and_mbox(kind, tmp_path, "History") as (be, env, box_path):
        engine = create_engine(be.database_url)

        def count(what: object) -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(what)).scalar_one())

        # With a helper parsing ahead (the default on two CPUs, explicit here).
        first = subprocess.Popen([*POSTDESK, "import", "mbox", str(box_path), "--notify",
                                  "--workers", "1"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: count(Ticket) >= KILL_AFTER_TICKETS or first.poll() is not None,
                     120, 0.02, what="the first import to open some tickets")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        tickets_at_kill = count(Ticket)
        assert first.returncode == -signal.SIGKILL, "the import ended before it was killed"
        assert tickets_at_kill < EMAILS

        again = subprocess.run([*POSTDESK, "import", "mbox", str(box_path), "--notify",
                                "--json"], env=env, capture_output=True, text=True,
                               timeout=600, check=True)
        assert again.returncode == 0, again.stderr
        # Nothing of the killed import lives on (its helper exits with it).
        wait_for(lambda: not processes_reading(box_path), 30,
                 what="no process left reading the mbox")

        assert_one_ticket_and_ack_per_email(engine, "History")
        with engine.connect() as conn:
            statuses = list(conn.execute(select(RawMessage.status)).scalars())
        engine.dispose()
        assert statuses == ["processed"] * EMAILS     # one raw message per email, all done
        print(f"\n{kind}: {tickets_at_kill}/{EMAILS} tickets existed at the kill")


def assert_one_ticket_and_ack_per_email(engine: Engine, subject: str) -> None:
    """Each email of ``desk_and_mbox`` is one ticket and one acknowledgement to its sender."""
    with engine.connect() as conn:
        subjects = sorted(conn.execute(select(Ticket.subject)).scalars())
        acks = list(conn.execute(select(Outbox.recipient).where(
            Outbox.template == "acknowledgement")).scalars())
    assert subjects == sorted(f"{subject} {i}" for i in range(EMAILS))
    assert sorted(acks) == sorted(f"user{i}@client.example" for i in range(EMAILS))


def processes_reading(path: Path) -> list[int]:
    """PIDs whose command line names ``path`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(path).encode() in cmdline:
                found.append(int(entry.name))
    return found


BATCH = 50


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("kind", [backend_param("sqlite"), backend_param("postgres-redis")])
def test_an_import_killed_inside_a_batch_transaction_keeps_nothing_of_that_batch(
        kind: str, workers: int, tmp_path: Path) -> None:
    with desk_and_mbox(kind, tmp_path, "Batched") as (be, env, box_path):
        engine = create_engine(be.database_url)
        command = [*POSTDESK, "import", "mbox", str(box_path), "--notify", "--batch",
                   str(BATCH), "--workers", str(workers)]

        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        try:
            # Freeze the import now and then, and kill it once it is frozen inside the
            # record transaction of a batch after the first (frozen, it cannot commit
            # between the look and the kill): rows accepted and not recorded, every
            # committed draft rendered (so the transaction open is not the one storing
            # the renderings), and a transaction holding the write lock.
            def frozen_mid_batch() -> bool:
                if first.poll() is not None:
                    return True
                first.send_signal(signal.SIGSTOP)
                state = tallies(engine)
                if (state["tickets"] >= BATCH and state["raws"] > state["processed"]
                        and state["drafts"] == 0 and writing(engine, be.database_url)):
                    first.send_signal(signal.SIGKILL)
                    return True
                first.send_signal(signal.SIGCONT)
                time.sleep(0.02)
                return False

            wait_for(frozen_mid_batch, 180, 0, what="the import inside a batch transaction")
        finally:
            first.send_signal(signal.SIGKILL)
            first.send_signal(signal.SIGCONT)
            first.wait(timeout=30)
        assert first.returncode == -signal.SIGKILL, "the import ended before it was killed"

        # Whole batches only: every processed email has its ticket, message, event and
        # acknowledgement; the batch that was being recorded has nothing but its rows.
        at_kill = tallies(engine)
        done = at_kill["processed"]
        assert done % BATCH == 0 and 0 < done < at_kill["raws"] <= EMAILS
        assert at_kill == {**at_kill, "tickets": done, "inbound": done, "created": done,
                           "acks": done, "outbound": done, "drafts": 0,
                           "pending": at_kill["raws"] - done}

        again = subprocess.run([*command, "--json"], env=env, capture_output=True,
                               text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        summary = json.loads(again.stdout)
        assert (summary["duplicates"], summary["tickets_created"]) == (done, EMAILS - done)
        wait_for(lambda: not processes_reading(box_path), 30,
                 what="no process left reading the mbox")

        final = tallies(engine)
        assert_one_ticket_and_ack_per_email(engine, "Batched")
        with engine.connect() as conn:
            outbox = set(conn.execute(select(Outbox.status)).scalars())
        engine.dispose()
        assert final == {"raws": EMAILS, "processed": EMAILS, "pending": 0, "tickets": EMAILS,
                         "inbound": EMAILS, "created": EMAILS, "acks": EMAILS,
                         "outbound": EMAILS, "drafts": 0}
        assert outbox == {"queued"}          # every email of every batch rendered
        print(f"\n{kind}: killed with {done} of {at_kill['raws']} accepted emails recorded")


def tallies(engine: Engine) -> dict[str, int]:
    def count(query: Any) -> int:
        return int(conn.execute(query).scalar_one())

    with engine.connect() as conn:
        return {
            "raws": count(select(func.count(RawMessage.id))),
            "processed": count(select(func.count(RawMessage.id))
                               .where(RawMessage.status == "processed")),
            "pending": count(select(func.count(RawMessage.id))
                             .where(RawMessage.status == "pending")),
            "tickets": count(select(func.count(Ticket.id))),
            "inbound": count(select(func.count(Message.id)).where(Message.direction == "in")),
            "outbound": count(select(func.count(Message.id))
                              .where(Message.direction == "out")),
            "created": count(select(func.count(Event.id))
                             .where(Event.kind == "ticket_created")),
            "acks": count(select(func.count(Outbox.id))
                          .where(Outbox.template == "acknowledgement")),
            "drafts": count(select(func.count(Outbox.id)).where(Outbox.status == "draft")),
        }


def writing(engine: Engine, database_url: str) -> bool:
    """Whether another session is inside a transaction that has written (PostgreSQL) or
    holds the write lock (SQLite)."""
    if engine.dialect.name == "sqlite":
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=0,
                               isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True              # database is locked: a writer is mid-transaction
        finally:
            conn.close()             # (rolls back our empty transaction, if it began)
        return False
    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL")).scalar_one())
