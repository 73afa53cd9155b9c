"""The IMAP poller against a real Dovecot: IDLE pickup, crashes (SIGKILL of a real
``postdesk imap`` process), server restarts, UIDVALIDITY changes, bulk backlogs, bad
messages, login failures (password and OAuth2), TLS/STARTTLS and several mailboxes."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import pytest
from imapclient import FLAGGED, SEEN
from sqlalchemy import func, select

from postdesk.ingest.imap import Backoff, ImapPoller
from postdesk.ingest.imap_auth import AuthFailed, TokenSource, parse_token_output
from postdesk.ingest.imap_sync import FAILED, TOO_LARGE, FolderSync, MoveRetry, Progress
from postdesk.scheduler import sweep_pending_raw
from postdesk.storage.models import ImapCursor, Message, RawMessage
from postdesk.storage.raw_store import raw_bytes
from postdesk.workflow.desk.mailboxes import mailbox_health
from tests.conftest_dovecot import make_dovecot_root, require_dovecot
from tests.dovecot import DovecotServer, free_port
from tests.mailgen import History, history
from tests.support import config_text, make_email, wait_for

# The poller's behaviour does not depend on the broker: SQLite+Stub and PostgreSQL+Redis
# (the foundation tests cover RabbitMQ end to end). Keeps CI well under its budget.
pytestmark = pytest.mark.backends("sqlite", "postgres-redis")

PW_ENV = "PD_TEST_IMAP_PW"
ROOT = Path(__file__).resolve().parent.parent


def imap_toml(dc: DovecotServer, *, name: str = "inbox", folder: str = "INBOX",
              processed: str = "Processed", poll: str = "1s", auth: str | None = None,
              port: int | None = None, ssl: bool = False, extra: str = "") -> str:
    auth = auth or f'password_env = "{PW_ENV}"'
    return (f'[[imap]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port or dc.port}\n'
            f'ssl = {"true" if ssl else "false"}\nusername = "support@desk.example"\n'
            f'{auth}\nfolder = "{folder}"\nprocessed_folder = "{processed}"\n'
            f'poll_interval = "{poll}"\n{extra}')


@pytest.fixture
def imap_pw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW_ENV, "secret")


def poller_for(desk: Any, box: Any = None, **kwargs: Any) -> ImapPoller:
    """A poller for the desk's first mailbox (or ``box``), wired as `postdesk serve` does."""
    app = desk.app
    return ImapPoller(app.services, app.accept, app.dispatch, box or desk.config.imap[0],
                      **kwargs)


def sync_for(desk: Any, box: Any, client: Any, caps: Any) -> FolderSync:
    return FolderSync(desk.app.services, desk.app.accept, box, client, caps)


@contextlib.contextmanager
def running(poller: ImapPoller) -> Iterator[ImapPoller]:
    poller.start()
    try:
        yield poller
    finally:
        poller.stop()


def count(desk: Any, model: Any, *where: Any) -> int:
    with desk.app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def inbound_messages(desk: Any) -> int:
    return count(desk, Message, Message.direction == "in")


def statuses(desk: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for raw in desk.raws():
        key = raw["status"] if raw["status"] != "quarantined" else f"q:{raw['reason']}"
        out[key] = out.get(key, 0) + 1
    return out


def message_ids(dc: DovecotServer, folder: str) -> list[str]:
    with dc.client() as c:
        c.select_folder(folder, readonly=True)
        found = c.fetch(c.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    return [data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split(":", 1)[1].strip()
            for data in found.values()]


def assert_history_outcome(desk: Any, h: History) -> None:
    """Every generated message processed exactly once, with the expected outcome."""
    assert count(desk, RawMessage) == len(h.messages)
    assert len(desk.tickets()) == h.tickets
    assert inbound_messages(desk) == h.tickets + h.replies
    assert statuses(desk) == {"processed": h.tickets + h.replies,
                              "q:unknown_sender": h.unknown}


# --- unit: backoff and tokens -------------------------------------------------------------

def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    top = Backoff(1.0, 60.0, rng=lambda: 1.0)
    assert [top.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    low = Backoff(1.0, 60.0, rng=lambda: 0.0)
    assert [low.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    low.reset()
    assert low.next_delay() == 0.5


def test_token_output_bare_or_json() -> None:
    assert parse_token_output("abc.def\n", 100.0).value == "abc.def"
    assert parse_token_output("abc", 100.0).expires_at is None
    token = parse_token_output('{"access_token": "t1", "expires_in": 3600}', 100.0)
    assert (token.value, token.expires_at) == ("t1", 3700.0)
    for bad in ("", "{not json", '{"expires_in": 5}', "two words"):
        with pytest.raises(AuthFailed):
            parse_token_output(bad, 0.0)


def test_token_source_caches_until_shortly_before_expiry(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    command = (f'echo run >> {runs}; echo \'{{"access_token": "tok-\'$(wc -l < {runs})\'", '
               f'"expires_in": 600}}\'')
    now = [1000.0]
    tokens = TokenSource(command, monotonic=lambda: now[0], margin_s=120)
    assert tokens.get() == ("tok-1", True)
    now[0] += 400                           # 200 s left: still good
    assert tokens.get() == ("tok-1", False)
    assert tokens.refresh_due_at() == 1000 + 600 - 120
    now[0] += 100                           # 100 s left: inside the margin, refresh
    assert tokens.get() == ("tok-2", True)
    assert tokens.get(force=True) == ("tok-3", True)
    with pytest.raises(AuthFailed, match="exited with status 3"):
        TokenSource("echo oops >&2; exit 3").get()


# --- the poller against Dovecot -----------------------------------------------------------
# Everything from here on runs a real Dovecot (and some a `postdesk imap` subprocess): slow.

@pytest.mark.slow
def test_new_mail_during_idle_becomes_a_ticket_before_the_next_poll(make_desk, dovecot,
                                                                     imap_pw):
    # A one-hour poll interval (and IDLE re-issued only every 25 minutes): only IDLE can
    # explain a pickup within the wait below.
    desk = make_desk(extra=imap_toml(dovecot, poll="1h"))
    with running(poller_for(desk)) as poller:
        wait_for(poller.waiting.is_set, 30, what="poller idling")
        time.sleep(0.2)   # inside IDLE, not between the sync and IDLE
        dovecot.append(make_email(subject="Printer on fire").as_bytes())
        wait_for(lambda: desk.tickets(), 60, what="ticket from IDLE")
    [ticket] = desk.tickets()
    assert ticket["subject"] == "Printer on fire"
    assert dovecot.uids("INBOX") == []
    assert len(dovecot.uids("Processed")) == 1
    [raw] = desk.raws()
    assert raw["source"] == "imap:inbox"


@pytest.mark.slow
def test_idle_is_reissued_every_idle_timeout(make_desk, dovecot, imap_pw, caplog):
    caplog.set_level(logging.DEBUG, logger="imapclient.imapclient")   # logs each "< DONE"
    desk = make_desk(extra=imap_toml(dovecot, poll="60s", extra='idle_timeout = "1s"\n'))
    with running(poller_for(desk)):
        wait_for(lambda: caplog.text.count("< DONE") >= 3, 30, what="three IDLE cycles")
        dovecot.append(make_email(subject="Still listening").as_bytes())
        wait_for(lambda: desk.tickets(), 30, what="mail after the re-issues")


@pytest.mark.slow
def test_same_email_by_smtp_and_imap_is_one_ticket_message(make_desk, dovecot, imap_pw):
    desk = make_desk(extra=imap_toml(dovecot))
    poller = poller_for(desk)
    first, second = make_email(subject="Two doors A"), make_email(subject="Two doors B")
    # A mailbox copy never has the same bytes as the SMTP one: the MTA adds headers.
    via_imap = [b"Received: from mx.desk.example by imap.desk.example; "
                b"Mon, 23 Nov 2026 09:00:00 +0000\r\n" + m.as_bytes() for m in (first, second)]

    desk.send(first)                     # SMTP first, then the mailbox copy
    desk.wait_settled()
    dovecot.append(via_imap[0])
    dovecot.append(via_imap[1])          # mailbox first, then SMTP
    assert poller.run_once().accepted == 2
    desk.wait_settled()
    desk.send(second)
    desk.wait_settled()

    tickets = desk.tickets()
    assert sorted(t["subject"] for t in tickets) == ["Two doors A", "Two doors B"]
    for t in tickets:
        inbound = [m for m in desk.ticket(t["ref"])["messages"] if m["direction"] == "in"]
        assert len(inbound) == 1
    assert count(desk, RawMessage) == 4
    assert statuses(desk) == {"processed": 2, "duplicate": 2}
    assert len([o for o in desk.outbox() if o["template"] == "acknowledgement"]) == 2


@pytest.mark.slow
@pytest.mark.serial
def test_restarted_dovecot_mid_batch_and_while_idle(make_desk, dovecot, imap_pw, caplog):
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    h = history(300, tag="restart")
    dovecot.append_many(h.raws())
    # One worker thread keeps the processing order, so replies find their tickets.
    desk = make_desk(extra=imap_toml(dovecot), workers=False)
    desk.app.start_workers(threads=1)
    with running(poller_for(desk, socket_timeout=10)) as poller:
        wait_for(lambda: count(desk, RawMessage) >= 40, 30, what="the batch under way")
        dovecot.restart()                          # in the middle of the backlog
        wait_for(lambda: count(desk, RawMessage) == 300 and not dovecot.uids("INBOX"), 60,
                 what="backlog finished after the restart")
        wait_for(poller.waiting.is_set, 10, what="poller idling")
        dovecot.restart()                          # while idling
        dovecot.append(make_email(subject="After the second restart").as_bytes())
        wait_for(lambda: count(desk, RawMessage) == 301, 30, what="mail after restart")
        # 301 emails through one worker thread: ~20 s alone, minutes on a busy machine.
        desk.wait_settled(300)
    assert "connection lost" in caplog.text
    assert len(dovecot.uids("Processed")) == 301
    assert len(desk.tickets()) == h.tickets + 1
    assert inbound_messages(desk) == h.tickets + h.replies + 1


@pytest.mark.slow
def test_uidvalidity_change_rescans_without_duplicates_or_misses(make_desk, dovecot, imap_pw,
                                                                caplog):
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    # \Seen mode keeps processed mail in the folder: the hard case for a re-scan.
    desk = make_desk(extra=imap_toml(dovecot, processed=""))
    poller = poller_for(desk)
    for i in range(5):
        dovecot.append(make_email(subject=f"Before {i}").as_bytes())
    assert poller.run_once().accepted == 5
    for i in range(2):
        dovecot.append(make_email(subject=f"Unseen when it changed {i}").as_bytes())
    old = dovecot.uidvalidity()
    dovecot.reset_uidvalidity()
    assert dovecot.uidvalidity() != old

    stats = poller.run_once()
    assert (stats.accepted, stats.duplicates) == (2, 5)
    assert "UIDVALIDITY" in caplog.text
    assert poller.run_once().fetched == 0
    desk.wait_settled()
    assert count(desk, RawMessage) == 7
    assert len(desk.tickets()) == 7
    assert inbound_messages(desk) == 7
    with desk.app.sessions() as s:
        cursor = s.get(ImapCursor, ("inbox:INBOX", dovecot.uidvalidity()))
        assert cursor is not None and cursor.last_uid == 7
    with dovecot.client() as c:
        c.select_folder("INBOX", readonly=True)
        flags = c.get_flags(c.search("ALL"))
    assert len(flags) == 7 and all(SEEN in f for f in flags.values())


@pytest.mark.slow
def test_thousand_waiting_messages_exactly_once(make_desk, dovecot, imap_pw):
    h = history(1000, tag="k")
    dovecot.append_many(h.raws())
    desk = make_desk(extra=imap_toml(dovecot), workers=False)
    desk.app.start_workers(threads=1)
    poller = poller_for(desk)
    stats = poller.run_once()
    assert (stats.accepted, stats.duplicates, stats.skipped) == (1000, 0, 0)
    # 1,000 emails through one worker thread: ~1 min alone, minutes on a busy machine.
    desk.wait_settled(600)
    assert_history_outcome(desk, h)
    assert dovecot.uids("INBOX") == []
    assert len(dovecot.uids("Processed")) == 1000

    again = poller.run_once()
    assert (again.fetched, again.acknowledged) == (0, 0)
    assert count(desk, RawMessage) == 1000


# --- crashes of a real `postdesk imap` process --------------------------------------------

# Runs `postdesk imap`, but stops it dead between "cursor committed" and "moved": the test
# SIGKILLs it there. The pause is injected from the outside; the poller has no test hooks.
PAUSED_CHILD = """
import sys, time
from pathlib import Path
import postdesk.ingest.imap_sync as imap_sync

def paused(client, uids, *args, **kwargs):
    Path(sys.argv[2]).write_text(" ".join(map(str, uids)))
    time.sleep(3600)

imap_sync.acknowledge = paused
from postdesk.cli import main
sys.exit(main(["imap", "--config", sys.argv[1]]))
"""


def write_config(make_desk: Any, tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "postdesk.toml"
    path.write_text(config_text(make_desk.backend, tmp_path / "data", extra=extra))
    return path


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err)


def spawn_imap(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return spawn(["-m", "postdesk.cli", "imap", "--config", str(config)], log)


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def stop_child(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    assert code == 0, log.read_text()


def process_everything(desk: Any, timeout: float = 60) -> None:
    """The child only stored the mail (stub broker, or nobody listening yet): hand every
    pending raw message to this process's worker, as the scheduler's sweeper would."""
    sweep_pending_raw(desk.app.services, desk.app.dispatch, timedelta(0))
    desk.wait_settled(timeout)


@pytest.mark.slow
def test_sigkill_between_commit_and_move_makes_no_duplicate(make_desk, dovecot, imap_pw,
                                                           tmp_path):
    extra = imap_toml(dovecot)
    desk = make_desk(extra=extra, workers=False)
    config = write_config(make_desk, tmp_path, extra)
    log = tmp_path / "child.log"
    for i in range(3):
        dovecot.append(make_email(subject=f"Crash window {i}").as_bytes())

    marker = tmp_path / "paused"
    child = spawn(["-c", PAUSED_CHILD, str(config), str(marker)], log)
    try:
        wait_for(marker.exists, 30, what=f"child paused before the move\n{log.read_text()}")
        # Committed and cursor advanced, but nothing acknowledged on the server yet.
        assert count(desk, RawMessage) == 3
        assert dovecot.uids("INBOX") == [1, 2, 3] and dovecot.uids("Processed") == []
        with desk.app.sessions() as s:
            assert s.scalar(select(ImapCursor.last_uid)) == 3
    finally:
        sigkill(child)

    child = spawn_imap(config, log)
    try:
        wait_for(lambda: not dovecot.uids("INBOX"), 30, what=f"leftovers moved\n{log.read_text()}")
    finally:
        stop_child(child, log)
    assert "stored earlier but not yet moved" in log.read_text()
    assert len(dovecot.uids("Processed")) == 3

    desk.app.start_workers(threads=1)
    process_everything(desk)
    assert count(desk, RawMessage) == 3
    assert len(desk.tickets()) == 3
    assert inbound_messages(desk) == 3


@pytest.mark.slow
def test_sigkill_at_a_random_moment_of_a_thousand_then_restart(make_desk, dovecot, imap_pw,
                                                              tmp_path):
    seed = int(os.environ.get("PD_TEST_SEED", random.randrange(1 << 30)))
    kill_at = random.Random(seed).randint(1, 999)
    h = history(1000, tag="sigkill")
    dovecot.append_many(h.raws())
    extra = imap_toml(dovecot)
    desk = make_desk(extra=extra, workers=False)
    config = write_config(make_desk, tmp_path, extra)
    log = tmp_path / "child.log"
    why = f"(PD_TEST_SEED={seed}, killed after {kill_at} raw messages)"

    child = spawn_imap(config, log)
    try:
        wait_for(lambda: count(desk, RawMessage) >= kill_at, 120, interval=0.005,
                 what=f"{kill_at} messages accepted {why}\n{log.read_text()}")
    finally:
        sigkill(child)
    restarted = tmp_path / "restarted.log"
    child = spawn_imap(config, restarted)
    try:
        wait_for(lambda: not dovecot.uids("INBOX"), 120,
                 what=f"INBOX drained after restart {why}\n{restarted.read_text()}")
        # The first process may have moved the last email before it was killed: then the
        # INBOX is empty at once, and a SIGTERM now would reach a process still starting.
        wait_for(lambda: "postdesk imap running" in restarted.read_text(), 120,
                 what=f"the restarted process running {why}\n{restarted.read_text()}")
    finally:
        stop_child(child, restarted)

    # Exactly once at the door: each of the 1,000 emails is one raw message (what the
    # pipeline then makes of them is the same as in the test above), and each sits once
    # in Processed.
    with desk.app.sessions() as s:
        raws = list(s.scalars(select(RawMessage)))
        assert len(raws) == 1000, why
        stored = [BytesHeaderParser().parsebytes(
            raw_bytes(s, desk.app.blobs, raw))["Message-ID"] for raw in raws]
    assert sorted(stored) == sorted(m["Message-ID"] for m in h.messages), why
    assert sorted(message_ids(dovecot, "Processed")) == sorted(m["Message-ID"]
                                                               for m in h.messages), why
    assert dovecot.uids("INBOX") == [], why


# --- bad mail, bad logins -----------------------------------------------------------------

@pytest.mark.slow
def test_huge_and_unparseable_messages_do_not_stop_the_batch(make_desk, dovecot, imap_pw,
                                                            caplog):
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    desk = make_desk(extra=imap_toml(dovecot))      # smtp_in.max_message_bytes = 200,000
    huge = make_email(subject="Huge", body="x" * 300_000).as_bytes()
    garbage = b"\x00\xff\xfe this is not an email at all \x00" * 10
    dovecot.append(make_email(subject="Good one").as_bytes())
    dovecot.append(huge)
    dovecot.append(garbage)
    dovecot.append(make_email(subject="Good two").as_bytes())
    poller = poller_for(desk)

    stats = poller.run_once()
    assert (stats.accepted, stats.skipped, stats.acknowledged) == (3, 1, 3)
    assert "over smtp_in.max_message_bytes" in caplog.text
    # The huge one is left for a person, flagged; the others moved on.
    assert dovecot.uids("INBOX") == [2]
    with dovecot.client() as c:
        c.select_folder("INBOX", readonly=True)
        flags = c.get_flags([2])[2]
    assert FLAGGED in flags and TOO_LARGE in flags
    assert poller.run_once().fetched == 0 and dovecot.uids("INBOX") == [2]

    desk.wait_settled()
    assert sorted(t["subject"] for t in desk.tickets()) == ["Good one", "Good two"]
    assert statuses(desk)["processed"] == 2
    assert sum(n for k, n in statuses(desk).items() if k.startswith("q:")) == 1


@pytest.mark.slow
@pytest.mark.serial
def test_message_the_server_cannot_read_is_skipped(make_desk, dovecot, imap_pw, caplog):
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    desk = make_desk(extra=imap_toml(dovecot))
    for subject in ("Readable A", "Unreadable", "Readable B"):
        dovecot.append(make_email(subject=subject).as_bytes())
    # Dovecot (running as nobody) cannot open a root-only file: it answers the FETCH with
    # BYE and hangs up, every time.
    for path in dovecot.folder_path().glob("*/*"):
        if path.parent.name in ("new", "cur") and b"Subject: Unreadable" in path.read_bytes():
            os.chown(path, 0, 0)
            path.chmod(0o600)
    backoff = Backoff(0.1, 0.5)
    with running(poller_for(desk, backoff=backoff)):
        wait_for(lambda: len(dovecot.uids("Processed")) == 2, 30, what="the readable two")
        wait_for(lambda: "could not be fetched" in caplog.text, 10, what="the skip logged")
    assert dovecot.uids("INBOX") == [2]
    with dovecot.client() as c:
        c.select_folder("INBOX", readonly=True)
        assert FAILED in c.get_flags([2])[2]
    desk.wait_settled()
    assert sorted(t["subject"] for t in desk.tickets()) == ["Readable A", "Readable B"]


@pytest.mark.slow
@pytest.mark.serial
def test_missing_folder_is_a_clear_error_not_a_crash(make_desk, dovecot, imap_pw, caplog):
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    desk = make_desk(extra=imap_toml(dovecot, folder="Support"))
    with running(poller_for(desk, login_retry=0.2)) as poller:
        wait_for(lambda: caplog.text.count("folder 'Support' does not exist") >= 2, 10,
                 what="the error, twice")
        assert poller.running
        with dovecot.client() as c:
            c.create_folder("Support")
        dovecot.append(make_email(subject="Once the folder exists").as_bytes(),
                       folder="Support")
        wait_for(lambda: desk.tickets(), 10, what="mail read once the folder exists")


class PromptDovecot(DovecotServer):
    """Dovecot without its growing delay after failed logins (2 s doubling to 15 s per
    client IP), which would only make the login-failure tests slow."""

    def _config(self) -> str:
        return super()._config() + (
            "service anvil {\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}\n")


class OAuthDovecot(PromptDovecot):
    """Dovecot offering XOAUTH2. Its SASL mechanism hands the bearer token to the passdb
    as the password, so the passwd-file entry *is* the one valid token."""

    def _config(self) -> str:
        return super()._config().replace("auth_mechanisms = plain login",
                                         "auth_mechanisms = plain login xoauth2")

    def set_valid_token(self, token: str) -> None:
        self.users[self.default_user] = token      # for the test's own connections
        self.passwd_path.write_text(f"{self.default_user}:{{PLAIN}}{token}::::::\n")


@pytest.fixture
def prompt_dovecot() -> Iterator[PromptDovecot]:
    require_dovecot()
    server = PromptDovecot(make_dovecot_root())
    server.start()
    yield server
    server.kill()


@pytest.fixture
def oauth_dovecot() -> Iterator[OAuthDovecot]:
    require_dovecot()
    server = OAuthDovecot(make_dovecot_root(), {"support@desk.example": "tok-1"})
    server.start()
    yield server
    server.kill()


@pytest.mark.slow
@pytest.mark.serial
def test_login_failure_is_logged_retried_and_alerted_once(make_desk, prompt_dovecot,
                                                         monkeypatch, caplog):
    dovecot = prompt_dovecot
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    monkeypatch.setenv(PW_ENV, "wrong-password")
    desk = make_desk(extra=imap_toml(dovecot))
    dovecot.append(make_email(subject="Waiting for a login").as_bytes())
    poller = poller_for(desk, login_retry=0.3)
    with running(poller):
        wait_for(lambda: caplog.text.count("LOGIN FAILED") >= 3, 10, what="retries")
        assert poller.running
        failure = next(r for r in caplog.records if "LOGIN FAILED" in r.getMessage())
        assert failure.levelno == logging.ERROR
        message = failure.getMessage()
        assert "support@desk.example" in message and "AUTHENTICATIONFAILED" in message
        assert "retrying in" in message
        desk.wait_settled()
        alerts = [o for o in desk.outbox() if o["template"] == "imap_auth_alert"]
        assert len(alerts) == 1
        assert alerts[0]["to"] == ["dev2@agency.example"]       # the lead
        assert alerts[0]["status"] == "sent"
        assert "inbox" in alerts[0]["subject"]

        monkeypatch.setenv(PW_ENV, "secret")
        wait_for(lambda: desk.tickets(), 10, what="mail read once the login works")
    assert "login works again" in caplog.text
    assert len([o for o in desk.outbox() if o["template"] == "imap_auth_alert"]) == 1


@pytest.mark.slow
@pytest.mark.serial
def test_oauth2_token_refreshed_before_expiry_and_one_alert_when_refused(
        make_desk, oauth_dovecot, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    token_file, runs = tmp_path / "token.json", tmp_path / "runs"
    # 121 s of life with a 120 s margin: the poller must reconnect with a fresh token ~1 s.
    token_file.write_text('{"access_token": "tok-1", "expires_in": 121}')
    command = f"echo run >> {runs}; cat {token_file}"
    desk = make_desk(extra=imap_toml(oauth_dovecot, auth=f"oauth2_token_command = '{command}'"))
    poller = poller_for(desk, login_retry=0.3)
    with running(poller):
        oauth_dovecot.append(make_email(subject="Via OAuth").as_bytes())
        wait_for(lambda: desk.tickets(), 10, what="ticket via XOAUTH2")
        wait_for(lambda: len(runs.read_text().split()) >= 3, 10, what="token refreshed")

        oauth_dovecot.set_valid_token("tok-2")      # the provider revoked tok-1
        wait_for(lambda: caplog.text.count("LOGIN FAILED") >= 3, 10, what="refused logins")
        assert "OAuth2 (XOAUTH2)" in caplog.text
        token_file.write_text('{"access_token": "tok-2", "expires_in": 3600}')
        wait_for(lambda: "login works again" in caplog.text, 10, what="recovery")
        oauth_dovecot.append(make_email(subject="After the new token").as_bytes())
        wait_for(lambda: len(desk.tickets()) == 2, 10, what="ticket after recovery")
        desk.wait_settled()
    alerts = [o for o in desk.outbox() if o["template"] == "imap_auth_alert"]
    assert len(alerts) == 1 and alerts[0]["to"] == ["dev2@agency.example"]


# --- transport security, folders, several mailboxes ---------------------------------------

class TlsDovecot(DovecotServer):
    """Dovecot with a self-signed certificate for 127.0.0.1: STARTTLS on the IMAP port
    and implicit TLS on ``imaps_port``."""

    def __init__(self, root: Path, cert: Path, key: Path):
        self.cert, self.key, self.imaps_port = cert, key, free_port()
        super().__init__(root)

    def _config(self) -> str:
        text = super()._config().replace("ssl = no", f"ssl = yes\nssl_cert = <{self.cert}\n"
                                                     f"ssl_key = <{self.key}")
        return text.replace("inet_listener imaps {\n    port = 0",
                            f"inet_listener imaps {{\n    address = {self.host}\n"
                            f"    port = {self.imaps_port}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_and_starttls(make_desk, imap_pw, tmp_path, monkeypatch, mode):
    require_dovecot()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))   # trust it, as a real CA would be
    server = TlsDovecot(make_dovecot_root(), cert, key)
    server.start()
    try:
        if mode == "ssl":
            extra = imap_toml(server, port=server.imaps_port, ssl=True)
        else:
            extra = imap_toml(server, extra="starttls = true\n")
        desk = make_desk(extra=extra)
        server.append(make_email(subject=f"Over {mode}").as_bytes())
        assert poller_for(desk).run_once().accepted == 1
        desk.wait_settled()
        assert [t["subject"] for t in desk.tickets()] == [f"Over {mode}"]
        assert "TLS" in server.log_tail(200)
    finally:
        server.kill()


@pytest.mark.slow
def test_copy_store_expunge_when_the_server_has_no_move(make_desk, dovecot, imap_pw):
    desk = make_desk(extra=imap_toml(dovecot))
    for i in range(3):
        dovecot.append(make_email(subject=f"No MOVE {i}").as_bytes())
    box = desk.config.imap[0]
    with dovecot.client() as client:
        caps = set(client.capabilities()) - {b"MOVE"}
        stats = sync_for(desk, box, client, caps).run()
        assert stats.accepted == 3
        dovecot.append(make_email(subject="No MOVE nor UIDPLUS").as_bytes())
        assert sync_for(desk, box, client, caps - {b"UIDPLUS"}).run().accepted == 1
    assert dovecot.uids("INBOX") == []
    assert len(dovecot.uids("Processed")) == 4
    desk.wait_settled()
    assert len(desk.tickets()) == 4


@pytest.mark.slow
@pytest.mark.serial
def test_two_mailboxes_polled_at_once(make_desk, dovecot, imap_pw):
    with dovecot.client() as c:
        c.create_folder("Sales")
    extra = imap_toml(dovecot) + "\n" + imap_toml(dovecot, name="sales", folder="Sales")
    desk = make_desk(extra=extra)
    pollers = [poller_for(desk, box) for box in desk.config.imap]
    for p in pollers:
        p.start()
    try:
        dovecot.append(make_email(subject="To support").as_bytes())
        dovecot.append(make_email(subject="To sales").as_bytes(), folder="Sales")
        wait_for(lambda: len(desk.tickets()) == 2, 10, what="a ticket from each mailbox")
    finally:
        for p in pollers:
            p.stop()
    assert sorted(r["source"] for r in desk.raws()) == ["imap:inbox", "imap:sales"]
    assert dovecot.uids("INBOX") == [] and dovecot.uids("Sales") == []
    assert len(dovecot.uids("Processed")) == 2


# --- issue 18: the door never stops reading -----------------------------------------------

def health_of(desk: Any, mailbox: str = "inbox") -> dict[str, Any]:
    with desk.app.sessions() as s:
        return next((h for h in mailbox_health(s) if h["mailbox"] == mailbox), {})


def flags_of(dc: DovecotServer, uid: int, folder: str = "INBOX") -> tuple[bytes, ...]:
    with dc.client() as c:
        c.select_folder(folder, readonly=True)
        return tuple(c.get_flags([uid]).get(uid, ()))


def make_unreadable(dc: DovecotServer, marker: bytes) -> None:
    """Dovecot (running as nobody) cannot open a root-only file: it answers any FETCH
    that needs the file — the body, or the size when the file name does not carry it —
    with BYE and hangs up, every time."""
    [path] = [p for p in dc.folder_path().glob("*/*")
              if p.parent.name in ("new", "cur") and marker in p.read_bytes()]
    os.chown(path, 0, 0)
    path.chmod(0o600)


@pytest.mark.slow
@pytest.mark.serial
def test_one_unreadable_message_of_twenty_without_sizes_is_flagged_and_nineteen_are_tickets(
        make_desk, dovecot, imap_pw):
    poll = 10.0
    emails = [make_email(subject=f"Unsized {i}") for i in range(20)]
    # Written straight into the maildir: the file names carry no S=size, so even the size
    # of a message is read from its file.
    dovecot.append_many([m.as_bytes() for m in emails], method="maildir")
    assert not any(",S=" in p.name for p in dovecot.folder_path().glob("new/*"))
    make_unreadable(dovecot, b"Subject: Unsized 7\n")
    desk = make_desk(extra=imap_toml(dovecot, poll=f"{poll:.0f}s"))
    with running(poller_for(desk)):
        # The acceptance: 19 tickets within two poll intervals.
        wait_for(lambda: len(desk.tickets()) == 19, 2 * poll, what="19 tickets")
        wait_for(lambda: health_of(desk).get("failed_messages"), 10, what="the bad one recorded")
    assert sorted(t["subject"] for t in desk.tickets()) == sorted(
        f"Unsized {i}" for i in range(20) if i != 7)
    assert dovecot.uids("INBOX") == [8]                       # the bad one stays, flagged
    assert FAILED in flags_of(dovecot, 8) and FLAGGED in flags_of(dovecot, 8)
    assert len(dovecot.uids("Processed")) == 19
    [failed] = health_of(desk)["failed_messages"]
    assert (failed["uid"], failed["folder"]) == (8, "INBOX")
    assert "closed the connection" in failed["reason"]
    assert count(desk, RawMessage) == 19


@pytest.mark.slow
def test_a_message_that_cannot_be_stored_is_retried_alone_then_skipped_and_flagged(
        make_desk, dovecot, imap_pw):
    desk = make_desk(extra=imap_toml(dovecot))
    for subject in ("Fine A", "Poison", "Fine B"):
        dovecot.append(make_email(subject=subject).as_bytes())
    attempts = []

    def accept(raw: bytes, envelope: Any, source: str) -> Any:
        if b"Subject: Poison" in raw:
            attempts.append(source)
            raise ValueError("cannot store this one")
        return desk.app.accept(raw, envelope, source)

    box = desk.config.imap[0]
    with dovecot.client() as client:
        stats = FolderSync(desk.app.services, accept, box, client, client.capabilities()).run()
    assert (stats.accepted, stats.skipped, stats.acknowledged) == (2, 1, 2)
    assert len(attempts) == 3                 # in the batch, then twice alone
    assert dovecot.uids("INBOX") == [2] and FAILED in flags_of(dovecot, 2)
    [failed] = health_of(desk)["failed_messages"]
    assert failed["uid"] == 2
    assert failed["reason"] == "could not be stored: ValueError: cannot store this one"
    with dovecot.client() as client:          # the next pass leaves it alone
        again = FolderSync(desk.app.services, accept, box, client, client.capabilities()).run()
    assert (again.fetched, again.skipped, len(attempts)) == (0, 0, 3)
    desk.wait_settled()
    assert sorted(t["subject"] for t in desk.tickets()) == ["Fine A", "Fine B"]


def set_writable(path: Path, writable: bool) -> None:
    for sub in (path / "tmp", path / "new", path / "cur", path):
        sub.chmod(0o700 if writable else 0o500)


@pytest.mark.slow
@pytest.mark.serial
def test_a_read_only_processed_folder_blocks_no_new_mail_and_alerts_the_leads_once(
        make_desk, dovecot, imap_pw, caplog):
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    poll = 5.0
    dovecot.uids("Processed")                     # Dovecot creates the maildir on access
    processed = dovecot.folder_path("Processed")
    set_writable(processed, False)
    desk = make_desk(extra=imap_toml(dovecot, poll=f"{poll:.0f}s"))
    first = make_email(subject="Before the failed move")
    later = [make_email(subject=f"After the failed move {i}") for i in range(2)]
    dovecot.append(first.as_bytes())
    poller = poller_for(desk, move_retry=MoveRetry(first=0.5, cap=2.0))
    with running(poller):
        wait_for(lambda: [e["kind"] for e in health_of(desk).get("episodes", [])] == ["move"],
                 30, what="the first failed move recorded")
        for email in later:
            dovecot.append(email.as_bytes())
        # The acceptance: mail arriving after the failed move still becomes tickets within
        # two poll intervals.
        wait_for(lambda: len(desk.tickets()) == 3, 2 * poll, what="tickets despite the move")
        wait_for(lambda: health_of(desk)["unmoved"]["count"] == 3, 10, what="3 unmoved")
        assert dovecot.uids("Processed") == []
        desk.wait_settled()
        [alert] = desk.outbox(template="imap_move_alert")
        assert alert["to"] == ["dev2@agency.example"] and alert["status"] == "sent"
        assert "inbox" in alert["subject"]

        set_writable(processed, True)             # someone fixes the folder
        wait_for(lambda: not dovecot.uids("INBOX"), 30, what="everything moved")
        wait_for(lambda: health_of(desk)["ok"], 10, what="the episode over")
    # Moved exactly once: each email once in Processed, nothing left behind.
    assert sorted(message_ids(dovecot, "Processed")) == sorted(
        m["Message-ID"] for m in [first, *later])
    assert count(desk, RawMessage) == 3
    assert len(desk.outbox(template="imap_move_alert")) == 1
    assert "moving stored mail works again" in caplog.text


class SilentIdleProxy:
    """A TCP proxy in front of Dovecot that swallows the client's IDLE and DONE: the
    server never sees them and the client never gets an answer, as behind a broken
    middlebox. Everything else passes both ways."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.swallowed = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._client_to_server, args=(client, server),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                pending += data
                while b"\r\n" in pending:
                    line, pending = pending.split(b"\r\n", 1)
                    words = line.split()
                    if (len(words) == 2 and words[1].upper() == b"IDLE") or \
                            line.upper() == b"DONE":
                        self.swallowed += 1
                        continue
                    server.sendall(line + b"\r\n")
        _close_both(client, server)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        _close_both(source, sink)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


def _close_both(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@pytest.mark.slow
@pytest.mark.serial
def test_a_server_that_never_answers_idle_is_read_every_poll_interval(
        make_desk, dovecot, imap_pw, caplog):
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    poll = 5.0
    proxy = SilentIdleProxy(dovecot.port)
    try:
        desk = make_desk(extra=imap_toml(dovecot, poll=f"{poll:.0f}s", port=proxy.port))
        with running(poller_for(desk)) as poller:
            wait_for(lambda: "did not answer IDLE" in caplog.text, 3 * poll,
                     what="the unanswered IDLE noticed")
            assert proxy.swallowed >= 1 and poller.running
            wait_for(poller.waiting.is_set, 10, what="the poller waiting again")
            dovecot.append(make_email(subject="Behind a silent IDLE").as_bytes())
            # The acceptance: a ticket within poll_interval + 5 s.
            wait_for(lambda: desk.tickets(), poll + 5, what="ticket behind a silent IDLE")
    finally:
        proxy.close()
    assert [t["subject"] for t in desk.tickets()] == ["Behind a silent IDLE"]
    assert "polling every" in caplog.text


@pytest.mark.slow
def test_a_login_outage_across_a_restart_sends_one_alert(make_desk, prompt_dovecot,
                                                         monkeypatch, tmp_path):
    dovecot = prompt_dovecot
    monkeypatch.setenv(PW_ENV, "wrong-password")
    extra = imap_toml(dovecot)
    desk = make_desk(extra=extra, workers=False)
    config = write_config(make_desk, tmp_path, extra)
    log = tmp_path / "child.log"
    dovecot.append(make_email(subject="Waiting for the password").as_bytes())
    for run in (1, 2):                    # the same outage, a real process restarted
        child = spawn_imap(config, log)
        try:
            wait_for(lambda run=run: log.read_text().count("LOGIN FAILED") >= run, 30,
                     what=f"login failure of run {run}\n{log.read_text()}")
        finally:
            stop_child(child, log)
    assert len(desk.outbox(template="imap_auth_alert")) == 1
    assert health_of(desk)["episodes"][0]["kind"] == "login"

    monkeypatch.setenv(PW_ENV, "secret")  # fixed: the episode ends, the mail is read
    child = spawn_imap(config, log)
    try:
        wait_for(lambda: "login works again" in log.read_text(), 30, what=log.read_text())
        wait_for(lambda: count(desk, RawMessage) == 1, 30, what="the waiting mail")
    finally:
        stop_child(child, log)
    assert health_of(desk)["episodes"] == []
    assert len(desk.outbox(template="imap_auth_alert")) == 1


# --- unit: move retry and progress -------------------------------------------------------

def test_move_retry_doubles_to_a_cap_and_resets_on_success() -> None:
    now = [100.0]
    moves = MoveRetry(first=5, cap=20, monotonic=lambda: now[0])
    assert moves.due()
    assert [moves.failed() for _ in range(4)] == [5, 10, 20, 20]
    assert not moves.due()
    now[0] += 20
    assert moves.due()
    moves.succeeded()
    assert moves.failed() == 5


def test_a_backlog_logs_its_progress_with_remaining_and_rate(caplog) -> None:
    caplog.set_level(logging.INFO, logger="postdesk.imap")
    progress = Progress("inbox", 5000)
    for _ in range(10):
        progress.advance(200)
    lines = [r.getMessage() for r in caplog.records if "backlog" in r.getMessage()]
    assert lines[0].startswith("imap[inbox]: backlog: 1000 of 5000 stored so far, "
                               "4000 remaining, ")
    assert lines[0].endswith("/s") and len(lines) == 2
