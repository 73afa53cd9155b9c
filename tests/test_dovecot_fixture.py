"""Tests of the real-Dovecot test server (tests/dovecot.py, tests/conftest_dovecot.py).

Run: .venv/bin/python -m pytest tests/test_dovecot_fixture.py -q -p tests.conftest_dovecot
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
from imapclient.exceptions import IMAPClientError, LoginError

import tests.dovecot as dovecot_module
from tests.conftest_dovecot import (
    REQUIRE_ENV,
    make_dovecot_root,
    require_dovecot,
)
from tests.dovecot import DovecotError, DovecotServer, port_accepts
from tests.support import wait_for

# Real Dovecot servers started, restarted and filled: the whole module is slow.
pytestmark = pytest.mark.slow

USER = "support@desk.example"


def make_message(i: int, subject: str = "Ticket") -> bytes:
    body = "Hello, my order has not arrived yet. " * 20
    return (
        f"From: Customer {i} <customer{i}@example.com>\r\n"
        f"To: {USER}\r\n"
        f"Subject: {subject} {i}\r\n"
        f"Message-ID: <msg{i}@example.com>\r\n"
        f"X-Seq: {i}\r\n"
        "Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def message_ids(server: DovecotServer, folder: str = "INBOX") -> list[bytes]:
    """Message-IDs in UID order (BODY.PEEK so no flag changes)."""
    with server.client() as conn:
        conn.select_folder(folder, readonly=True)
        uids = sorted(conn.search("ALL"))
        if not uids:
            return []
        key = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
        data = conn.fetch(uids, [b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        return [data[uid][key].split(b":", 1)[1].strip() for uid in uids]


@pytest.fixture
def second_server() -> Iterator[DovecotServer]:
    require_dovecot()
    root = make_dovecot_root()
    server = DovecotServer(root, {"other@desk.example": "pw2"})
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- basics


def test_server_is_up_on_loopback_with_needed_capabilities(dovecot: DovecotServer) -> None:
    assert dovecot.host == "127.0.0.1"
    assert 0 < dovecot.port < 65536
    assert port_accepts(dovecot.host, dovecot.port)
    with dovecot.client() as conn:
        caps = set(conn.capabilities())
        folders = {name for _flags, _sep, name in conn.list_folders()}
    assert {b"IDLE", b"MOVE", b"UIDPLUS"} <= caps
    assert {"INBOX", "Processed"} <= folders


def test_append_then_fetch_over_imap(dovecot: DovecotServer) -> None:
    raw = make_message(1)
    dovecot.append(raw)
    assert dovecot.uids() == [1]
    with dovecot.client() as conn:
        conn.select_folder("INBOX")
        data = conn.fetch([1], ["BODY.PEEK[]", "FLAGS"])
    assert data[1][b"BODY[]"] == raw
    assert b"\\Seen" not in data[1][b"FLAGS"]


def test_wrong_password_is_rejected_without_a_delay(dovecot: DovecotServer) -> None:
    # Dovecot's default holds a failed login for 2 s; the login-failure tests need none.
    assert "\nauth_failure_delay = 0\n" in dovecot.config_path.read_text()
    conn = imapclient.IMAPClient(dovecot.host, port=dovecot.port, ssl=False, timeout=10)
    with pytest.raises(LoginError):
        conn.login(USER, "wrong")
    conn.shutdown()


def test_move_to_processed(dovecot: DovecotServer) -> None:
    dovecot.append(make_message(1))
    dovecot.append(make_message(2))
    with dovecot.client() as conn:
        conn.select_folder("INBOX")
        conn.move([1], "Processed")
    assert dovecot.uids("INBOX") == [2]
    assert dovecot.uids("Processed") == [1]
    assert message_ids(dovecot, "Processed") == [b"<msg1@example.com>"]
    assert message_ids(dovecot, "INBOX") == [b"<msg2@example.com>"]


# --------------------------------------------------------------------------- lifecycle


def test_restart_keeps_port_mail_and_uidvalidity(dovecot: DovecotServer) -> None:
    dovecot.append_many([make_message(i) for i in range(3)])
    with dovecot.client() as conn:
        conn.select_folder("INBOX")
        conn.move([3], "Processed")
    port, validity = dovecot.port, dovecot.uidvalidity()
    old_conn = dovecot.client()
    old_conn.select_folder("INBOX")

    started = time.monotonic()
    dovecot.restart()
    elapsed = time.monotonic() - started

    assert dovecot.port == port
    assert dovecot.uids() == [1, 2]
    assert dovecot.uids("Processed") == [1]
    assert dovecot.uidvalidity() == validity
    assert message_ids(dovecot) == [b"<msg0@example.com>", b"<msg1@example.com>"]
    # Connections from before the restart are gone: clients must reconnect.
    with pytest.raises((IMAPClientError, OSError)):
        old_conn.noop()
    old_conn.shutdown()
    print(f"\nrestart took {elapsed:.2f} s")


def test_stop_closes_port_and_ends_processes(dovecot: DovecotServer) -> None:
    with dovecot.client() as conn:
        conn.select_folder("INBOX")  # an imap process exists during stop
        started = time.monotonic()
        dovecot.stop()
        elapsed = time.monotonic() - started
    assert not dovecot.running
    assert not port_accepts(dovecot.host, dovecot.port)
    assert dovecot._instance_pids() == []
    assert "Killed with signal 15" in dovecot.log_tail(10)
    dovecot.stop()  # idempotent
    print(f"\nstop took {elapsed:.2f} s")


def test_start_returns_once_a_login_succeeds(second_server: DovecotServer) -> None:
    second_server.start()
    assert second_server.running
    with second_server.client() as conn:
        assert conn.select_folder("INBOX")[b"EXISTS"] == 0


def test_two_servers_run_side_by_side(dovecot: DovecotServer, second_server: DovecotServer) -> None:
    second_server.start()
    assert second_server.port != dovecot.port
    assert second_server.instance_name != dovecot.instance_name
    dovecot.append(make_message(1))
    second_server.append(make_message(2))
    second_server.append(make_message(3))
    assert message_ids(dovecot) == [b"<msg1@example.com>"]
    assert second_server.uids() == [1, 2]
    with (
        pytest.raises(LoginError),
        imapclient.IMAPClient(dovecot.host, port=dovecot.port, ssl=False, timeout=10) as conn,
    ):
        conn.login("other@desk.example", "pw2")


def test_restart_fails_clearly_when_port_was_taken(dovecot: DovecotServer) -> None:
    dovecot.stop()
    with socket.socket() as squatter:
        # SO_REUSEADDR: the port may have TIME_WAIT connections from before the stop.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((dovecot.host, dovecot.port))
        squatter.listen()
        with pytest.raises(DovecotError, match=f"port {dovecot.port} is taken"):
            dovecot.start()
    assert not dovecot.running


def test_first_start_retries_when_the_free_port_is_lost(
    second_server: DovecotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real_free_port = dovecot_module.free_port
    monkeypatch.setattr(
        dovecot_module, "free_port", lambda host: next(ports, None) or real_free_port(host)
    )
    try:
        second_server.start()
    finally:
        squatter.close()
    assert second_server.running
    assert second_server.port != taken
    assert "Address already in use" in second_server.log_tail()


# --------------------------------------------------------------------------- UIDVALIDITY


@pytest.mark.parametrize("folder", ["INBOX", "Processed"])
def test_reset_uidvalidity_keeps_messages(dovecot: DovecotServer, folder: str) -> None:
    dovecot.append_many([make_message(i) for i in range(3)], folder=folder)
    dovecot.append(make_message(9), folder="INBOX" if folder != "INBOX" else "Processed")
    other = "Processed" if folder == "INBOX" else "INBOX"
    before, other_before = dovecot.uidvalidity(folder), dovecot.uidvalidity(other)
    ids_before = message_ids(dovecot, folder)

    dovecot.reset_uidvalidity(folder)

    assert dovecot.uidvalidity(folder) != before
    assert dovecot.uidvalidity(other) == other_before
    assert message_ids(dovecot, folder) == ids_before
    assert len(ids_before) == 3
    assert dovecot.uids(other) == [1]
    # STATUS (answered from the list index when cached) agrees with SELECT.
    with dovecot.client() as conn:
        status = conn.folder_status(folder, [b"UIDVALIDITY"])
    assert status[b"UIDVALIDITY"] == dovecot.uidvalidity(folder)


# --------------------------------------------------------------------------- IDLE


def test_idle_sees_message_appended_from_another_connection(dovecot: DovecotServer) -> None:
    with dovecot.client() as watcher:
        watcher.select_folder("INBOX")
        watcher.idle()
        try:
            threading.Thread(target=dovecot.append, args=(make_message(1),)).start()

            def exists() -> list[tuple[object, ...]]:
                return [r for r in watcher.idle_check(timeout=1)
                        if len(r) > 1 and r[1] == b"EXISTS"]

            seen = wait_for(exists, 30, interval=0, what="EXISTS announced during IDLE")
        finally:
            watcher.idle_done()
    assert seen[0][0] == 1


# --------------------------------------------------------------------------- bulk append


@pytest.mark.parametrize("method", ["multiappend", "append", "maildir"])
def test_append_many_1000(dovecot: DovecotServer, method: str) -> None:
    raws = [make_message(i) for i in range(1000)]
    started = time.monotonic()
    dovecot.append_many(raws, method=method)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started

    assert dovecot.uids() == list(range(1, 1001))
    with dovecot.client() as conn:
        conn.select_folder("INBOX", readonly=True)
        data = conn.fetch(list(range(1, 1001)), [b"BODY.PEEK[HEADER.FIELDS (X-SEQ)]"])
        bodies = conn.fetch([1, 1000], [b"BODY.PEEK[]"])
    key = b"BODY[HEADER.FIELDS (X-SEQ)]"
    assert [int(data[uid][key].split(b":")[1]) for uid in sorted(data)] == list(range(1000))
    assert bodies[1][b"BODY[]"] == raws[0]
    assert bodies[1000][b"BODY[]"] == raws[999]
    for path in dovecot.maildir_root().glob("*/*"):
        if path.parent.name in ("cur", "new"):
            st = path.stat()
            assert (st.st_uid, st.st_gid) == (65534, 65534), path
    print(f"\nappend_many(1000, method={method!r}) took {elapsed:.3f} s")


def test_append_many_maildir_into_new_folder(dovecot: DovecotServer) -> None:
    dovecot.append_many(
        [make_message(i) for i in range(5)], folder="Archive 2026", method="maildir"
    )
    assert dovecot.uids("Archive 2026") == [1, 2, 3, 4, 5]
    assert dovecot.folder_path("Archive 2026").name == ".Archive 2026"


# --------------------------------------------------------------------------- setup rules


def test_root_that_dovecot_cannot_traverse_is_rejected() -> None:
    require_dovecot()
    private = Path(tempfile.mkdtemp())  # 0700, like pytest's tmp_path parents
    try:
        with pytest.raises(DovecotError, match="not world-traversable"):
            DovecotServer(private / "srv")
    finally:
        shutil.rmtree(private)


def test_missing_dovecot_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.conftest_dovecot.dovecot_binaries", lambda: None)
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="dovecot-imapd not installed"):
        require_dovecot()


def test_missing_dovecot_fails_when_services_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tests.conftest_dovecot.dovecot_binaries", lambda: None)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="dovecot-imapd not installed"):
        require_dovecot()


def test_fixture_directory_is_world_traversable() -> None:
    root = make_dovecot_root()
    try:
        assert all(os.stat(p).st_mode & 0o001 for p in root.parents)
    finally:
        root.rmdir()
