"""The real `postdesk` command in subprocesses: init, serve, tickets/outbox/quarantine
--json, clean shutdown, and friendly errors (no tracebacks for user mistakes)."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import backend, backend_param, free_port, make_email, wait_for

# Every test here runs the real command in subprocesses (`serve` for seconds): slow.
pytestmark = pytest.mark.slow

POSTDESK = [sys.executable, "-m", "postdesk.cli"]


def run(args: list[str], env: dict[str, str], cwd: Path, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*POSTDESK, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"postdesk {args} exited {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture(params=[backend_param("sqlite"), backend_param("postgres-redis")])
def installed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    """`postdesk init` in a fresh directory, on the requested backend, with a free port."""
    with backend(request.param, tmp_path) as be:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if request.param != "sqlite":
            env["POSTDESK_DATABASE_URL"] = be.database_url
            env["POSTDESK_BROKER_URL"] = be.broker_url
        run(["init", "--dir", str(tmp_path)], env, tmp_path)
        config = tmp_path / "postdesk.toml"
        port = free_port()
        text = config.read_text().replace("port = 2525", f"port = {port}")
        text = text.replace('broker_url = "stub://"',
                            f'broker_url = "stub://"\nqueue_namespace = "{be.namespace}"')
        config.write_text(text)
        if request.param != "sqlite":
            run(["db", "upgrade"], env, tmp_path)
        env["POSTDESK_CONFIG"] = str(config)
        env["PD_TEST_PORT"] = str(port)
        yield tmp_path, env


def wait_port(port: int, timeout: float = 30) -> None:
    def is_open() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for(is_open, timeout, 0.1, what=f"port {port} to listen")


def test_serve_end_to_end(installed):
    cwd, env = installed
    port = int(env["PD_TEST_PORT"])
    serve = subprocess.Popen([*POSTDESK, "serve"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port)
        msg = make_email(sender="alice@client.example", subject="Shop offline")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.send_message(msg)

        def ticket_listed() -> list:
            out = run(["tickets", "list", "--json"], env, cwd).stdout
            return json.loads(out)

        tickets = wait_for(ticket_listed, 60, 0.2, what="ticket in tickets list")
        assert len(tickets) == 1 and tickets[0]["requester"] == "alice@client.example"
        ref = tickets[0]["ref"]

        def ack_listed() -> list:
            rows = json.loads(run(["outbox", "list", "--json"], env, cwd).stdout)
            return [r for r in rows if r["template"] == "acknowledgement"]

        [ack] = wait_for(ack_listed, 60, 0.2, what="acknowledgement in outbox")
        assert ack["to"] == ["alice@client.example"]
        assert f"[{ref}]" in ack["subject"]
        assert ack["in_reply_to"] == msg["Message-ID"]

        shown = json.loads(run(["tickets", "show", ref, "--json"], env, cwd).stdout)
        assert shown["messages"][0]["message_id"] == msg["Message-ID"]

        raw = run(["outbox", "show", str(ack["id"]), "--raw"], env, cwd).stdout
        assert f"Message-ID: {ack['message_id']}" in raw

        bad = make_email(sender="mallory@elsewhere.example", subject="hi")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.send_message(bad)

        def quarantined() -> list:
            return json.loads(run(["quarantine", "list", "--json"], env, cwd).stdout)

        [q] = wait_for(quarantined, 60, 0.2, what="quarantine entry")
        assert q["reason"] == "unknown_sender"
        assert not [r for r in json.loads(run(["outbox", "list", "--json"], env, cwd).stdout)
                    if "mallory@elsewhere.example" in r["to"]
                    and r["template"] == "acknowledgement"]
    finally:
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    assert "Traceback" not in err


def test_friendly_errors(tmp_path: Path) -> None:
    env = {**os.environ}
    env.pop("POSTDESK_CONFIG", None)
    missing = run(["tickets", "list"], env, tmp_path, check=False)
    assert missing.returncode == 2
    assert "config file not found" in missing.stderr
    assert "Traceback" not in missing.stderr

    run(["init", "--dir", str(tmp_path)], env, tmp_path)
    config = tmp_path / "postdesk.toml"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config.write_text(config.read_text().replace("port = 2525", f"port = {port}"))
    try:
        in_use = run(["serve", "--config", str(config)], env, tmp_path, check=False)
    finally:
        busy.close()
    assert in_use.returncode == 2
    assert f"smtp_in.port: 127.0.0.1:{port} is already in use" in in_use.stderr
    assert "Traceback" not in in_use.stderr

    bad_db = run(["tickets", "list", "--config", str(config)],
                 {**env, "POSTDESK_DATABASE_URL": "notadb://x"}, tmp_path, check=False)
    assert bad_db.returncode == 2
    assert "desk.database_url" in bad_db.stderr
    assert "Traceback" not in bad_db.stderr

    config.write_text(config.read_text().replace('plan = "enterprise"', 'plan = "gold"'))
    check = run(["config", "check", "--config", str(config)], env, tmp_path, check=False)
    assert check.returncode == 2
    assert "orgs[0].plan: unknown plan 'gold'" in check.stderr
