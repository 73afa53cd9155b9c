"""Nothing lost, nothing twice, across kill -9 of `postdesk import`: the import is SIGKILLed
while it works through its batches (some accepted and processed, some accepted and still
pending, the rest not read yet), run again over the same mbox, and every email ends as
exactly one raw message, one ticket and one queued acknowledgement."""

from __future__ import annotations

import mailbox
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from postdesk.storage.models import Outbox, RawMessage, Ticket
from tests.support import backend, backend_param, config_text, make_email, wait_for

# `postdesk import` subprocesses and a SIGKILL: slow.
pytestmark = pytest.mark.slow

POSTDESK = [sys.executable, "-m", "postdesk.cli"]
EMAILS = 300
KILL_AFTER_TICKETS = 15


@pytest.mark.parametrize("kind", [backend_param("sqlite"), backend_param("postgres-redis")])
def test_an_import_killed_mid_batch_and_run_again_makes_each_ticket_and_ack_once(
        kind: str, tmp_path: Path) -> None:
    with backend(kind, tmp_path) as be:
        config = tmp_path / "postdesk.toml"
        config.write_text(config_text(be, tmp_path / "data"))
        env = {**os.environ, "POSTDESK_CONFIG": str(config)}
        subprocess.run([*POSTDESK, "db", "upgrade"], env=env, check=True,
                       capture_output=True, timeout=120)
        box_path = tmp_path / "history.mbox"
        box = mailbox.mbox(box_path)
        for i in range(EMAILS):
            box.add(make_email(sender=f"user{i}@client.example", subject=f"History {i}",
                               message_id=f"<history-{i}@client.example>"))
        box.close()
        engine = create_engine(be.database_url)

        def count(what: object) -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(what)).scalar_one())

        first = subprocess.Popen([*POSTDESK, "import", "mbox", str(box_path), "--notify"],
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
        # Nothing of the killed import lives on (its parse-ahead child exits with it).
        wait_for(lambda: not processes_reading(box_path), 30,
                 what="no process left reading the mbox")

        with engine.connect() as conn:
            subjects = sorted(conn.execute(select(Ticket.subject)).scalars())
            acks = list(conn.execute(select(Outbox.recipient).where(
                Outbox.template == "acknowledgement")).scalars())
            statuses = list(conn.execute(select(RawMessage.status)).scalars())
        engine.dispose()
        assert subjects == sorted(f"History {i}" for i in range(EMAILS))
        assert sorted(acks) == sorted(f"user{i}@client.example" for i in range(EMAILS))
        assert statuses == ["processed"] * EMAILS     # one raw message per email, all done
        print(f"\n{kind}: {tickets_at_kill}/{EMAILS} tickets existed at the kill")


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
