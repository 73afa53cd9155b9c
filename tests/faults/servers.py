"""Private servers a fault test may stop: a PostgreSQL cluster (initdb + pg_ctl from the
machine's PostgreSQL 15, run as the ``postgres`` user when the tests run as root, which
initdb refuses) and a redis-server, each on its own free port in its own directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import REQUIRE_SERVICES, free_port, wait_for

PG_BIN = Path(os.environ.get("POSTDESK_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def need(path: str | Path, what: str) -> None:
    if not (Path(path).exists() or shutil.which(str(path))):
        if REQUIRE_SERVICES:
            pytest.fail(f"{what} ({path}) is required for the fault matrix")
        pytest.skip(f"{what} ({path}) not installed")


class PrivatePostgres:
    def __init__(self) -> None:
        need(PG_BIN / "initdb", "PostgreSQL's initdb")
        # Not under pytest's tmp_path: that is private to root, and the server runs as
        # postgres when we are root.
        self.root = Path(tempfile.mkdtemp(prefix="pd-faults-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: object) -> None:
        subprocess.run([*self.as_user, *map(str, args)], check=True, capture_output=True,
                       timeout=120)

    def start(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "log", "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                        f"-c fsync=off -c max_connections=200", "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: the way a crash or a pulled cable looks to the clients."""
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):   # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    def __init__(self) -> None:
        need("redis-server", "redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 30, 0.1, what="private redis-server")

    def kill(self) -> None:
        """SIGKILL: everything queued in it is lost (no persistence), as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.kill()
