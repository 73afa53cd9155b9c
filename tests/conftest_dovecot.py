"""pytest plugin: a fresh real Dovecot IMAP server per test.

Load it with ``pytest_plugins = ["tests.conftest_dovecot"]`` in the root conftest.py
(or ``-p tests.conftest_dovecot``). Fixture:

``dovecot``  (function scope) a started ``tests.dovecot.DovecotServer`` with the user
             support@desk.example / secret and the folders INBOX and Processed; killed
             and its directory removed after the test.

Without Dovecot (the ``dovecot``/``doveadm`` binaries, and root) the fixture skips the
test, unless ``POSTDESK_REQUIRE_SERVICES=1``: then it fails, so CI cannot skip silently.
The server's files go under /dev/shm when it exists (tmpfs: creating files there is
~20x faster than on this machine's ext4 disk); ``POSTDESK_DOVECOT_TMPDIR`` overrides.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import DovecotServer, dovecot_binaries

REQUIRE_ENV = "POSTDESK_REQUIRE_SERVICES"
TMPDIR_ENV = "POSTDESK_DOVECOT_TMPDIR"


def dovecot_unavailable_reason() -> str | None:
    if dovecot_binaries() is None:
        return "dovecot-imapd not installed"
    if os.geteuid() != 0:
        return "the Dovecot test server needs root (it switches to the user 'nobody')"
    return None


def require_dovecot() -> None:
    """Skip the current test when Dovecot cannot run; fail instead under CI."""
    reason = dovecot_unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(
            f"{reason}, but {REQUIRE_ENV}=1 requires the real IMAP server "
            "(apt-get install dovecot-imapd; run the tests as root)",
            pytrace=False,
        )
    pytest.skip(reason)


def make_dovecot_root() -> Path:
    """A new world-traversable directory for one server (pytest's tmp_path is not)."""
    base = os.environ.get(TMPDIR_ENV)
    if not base and os.access("/dev/shm", os.W_OK | os.X_OK):
        base = "/dev/shm"
    return Path(tempfile.mkdtemp(prefix="pd-dovecot-", dir=base or None))


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    require_dovecot()
    root = make_dovecot_root()
    server: DovecotServer | None = None
    try:
        server = DovecotServer(root)
        server.start()
        yield server
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)
