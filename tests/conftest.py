from __future__ import annotations

import logging
import os
import re
import smtplib
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from sqlalchemy import select

from postdesk.app import App
from postdesk.ingest.smtp import IngestHandler, SmtpServer
from postdesk.storage.models import Outbox, RawMessage, Ticket
from postdesk.views import outbox_json, raw_json, ticket_json, ticket_list_query
from postdesk.workflow.rules.clock import Clock
from postdesk.workflow.rules.config import Config, parse_config
from tests.support import (
    HYPOTHESIS_PROFILE_ENV,
    backend,
    backend_param,
    config_text,
    drop_templates,
    free_port,
    this_weeks_monday,
    wait_for,
)

# The Dovecot fixture lives in its own plugin module.
_DOVECOT_PLUGIN = Path(__file__).parent / "conftest_dovecot.py"
pytest_plugins = ["tests.conftest_dovecot"] if _DOVECOT_PLUGIN.exists() else []

logging.getLogger("mailparser").setLevel(logging.WARNING)

BACKENDS = ["sqlite", "postgres-redis", "postgres-rabbitmq"]

# Hypothesis profiles. "ci" keeps every property at the example count it declares; "fast"
# runs a tenth of them. Properties that set their own count scale it with
# tests.support.examples(). Chosen in pytest_configure. Neither has a deadline: Hypothesis'
# default (200 ms per example) is a wall-clock budget, and with the suite spread over
# xdist workers an example's time says more about its neighbours than about it.
settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("fast", max_examples=10, deadline=None)


def pytest_configure(config: pytest.Config) -> None:
    """Load a Hypothesis profile: POSTDESK_HYPOTHESIS_PROFILE when set; otherwise "fast"
    for the fast tier (``-m "not services and not slow"``: any run that leaves out the slow
    tests) and "ci" for every other run, the full suite in CI included."""
    profile = os.environ.get(HYPOTHESIS_PROFILE_ENV)
    if not profile:
        fast_tier = re.search(r"\bnot\s+slow\b", config.getoption("markexpr") or "")
        profile = "fast" if fast_tier else "ci"
    settings.load_profile(profile)


@pytest.hookimpl(tryfirst=True)   # before xdist reads the groups off the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every ``serial`` test joins one xdist group: under ``--dist loadgroup`` (pyproject)
    the group goes to one worker whole and its tests run there one after another, so no
    two of them overlap. The rest are handed out one test at a time."""
    for item in items:
        if item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group("serial"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    # xdist names a grouped test "...@serial". Without the group the serial tests would
    # be spread over every worker, silently (pytest 9.2 with pytest-xdist 3.8 did that;
    # pyproject pins pytest): fail them instead.
    if (item.config.getoption("loadgroup", default=False)
            and item.get_closest_marker("serial") and not item.nodeid.endswith("@serial")):
        pytest.fail("--dist loadgroup ignored this serial test's xdist group "
                    "(check the pytest and pytest-xdist versions against pyproject)",
                    pytrace=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    drop_templates()


class Desk:
    """A running postdesk in this process: workers, SMTP server, database."""

    def __init__(self, app: App, server: SmtpServer | None):
        self.app = app
        self.server = server

    @property
    def config(self) -> Config:
        return self.app.config

    @property
    def smtp_port(self) -> int:
        assert self.server is not None
        return self.server.controller.port

    def send(self, msg: EmailMessage | bytes, *, mail_from: str | None = None,
             rcpt: list[str] | None = None) -> Any:
        # On the wire lines end in CRLF (an SMTP server reads lines, at most 1000 long).
        raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=SMTP_POLICY)
        sender = mail_from if mail_from is not None else (
            "" if isinstance(msg, bytes) else msg["From"])
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as smtp:
            return smtp.sendmail(sender, rcpt or ["support@desk.example"], raw)

    def tickets(self) -> list[dict[str, Any]]:
        with self.app.sessions() as s:
            return [ticket_json(s, t, "PD") for t in s.scalars(ticket_list_query())]

    def ticket(self, ref: str) -> dict[str, Any]:
        with self.app.sessions() as s:
            t = s.get(Ticket, int(ref.split("-")[1]))
            return ticket_json(s, t, "PD", messages=True)

    def outbox(self, template: str | None = None, to: str | None = None
               ) -> list[dict[str, Any]]:
        with self.app.sessions() as s:
            rows = [outbox_json(r, "PD") for r in s.scalars(select(Outbox).order_by(Outbox.id))]
        return [r for r in rows if (template is None or r["template"] == template)
                and (to is None or to in r["to"])]

    def acks(self) -> list[dict[str, Any]]:
        return self.outbox(template="acknowledgement")

    def outbox_raw(self, outbox_id: int) -> bytes:
        with self.app.sessions() as s:
            return s.get(Outbox, outbox_id).raw

    def raws(self) -> list[dict[str, Any]]:
        with self.app.sessions() as s:
            return [raw_json(r) for r in s.scalars(select(RawMessage).order_by(RawMessage.id))]

    def settled(self) -> bool:
        """No raw message pending and no outbox email drafted, queued or sending."""
        with self.app.sessions() as s:
            pending = s.scalar(select(RawMessage.id).where(RawMessage.status == "pending")
                               .limit(1))
            unsent = s.scalar(select(Outbox.id).where(
                Outbox.status.in_(("draft", "queued", "sending"))).limit(1))
        return pending is None and unsent is None

    def wait_settled(self, timeout: float = 30.0) -> None:
        wait_for(self.settled, timeout, what="all mail processed and sent")


# An idle worker thread or consumer looks for work (and for a stop request) this often.
# The product's 200 ms made every desk's stop take ~0.4 s (threads, then consumers), about
# a minute of the suite; stopping is what the tests do after each one.
TEST_WORKER_TIMEOUT_MS = 50


def start_desk(cfg: Config, *, smtp: bool = True, workers: bool = True,
               clock: Clock | None = None) -> Desk:
    app = App(cfg, clock=clock, worker_timeout_ms=TEST_WORKER_TIMEOUT_MS)
    app.upgrade_database()
    app.sync_directory()
    if workers:
        app.start_workers()
    server = None
    if smtp:
        handler = IngestHandler(cfg.desk.support_addresses, app.accept)
        server = SmtpServer("127.0.0.1", free_port(), cfg.smtp_in.max_message_bytes, handler)
        server.start()
    return Desk(app, server)


def stop_desk(desk: Desk) -> None:
    if desk.server:
        desk.server.stop()
    desk.app.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests using ``make_desk`` run on every backend, or on those a
    ``@pytest.mark.backends(...)`` marker names (to keep CI time in hand: RabbitMQ adds
    nothing to a test about staff commands that Redis has not shown). Every backend but
    SQLite is marked ``services``."""
    if "backend_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        kinds = list(marker.args) if marker else BACKENDS
        metafunc.parametrize("backend_kind", [backend_param(kind) for kind in kinds])


@pytest.fixture
def make_desk(tmp_path: Path, backend_kind: str) -> Iterator[Any]:
    """Factory: ``make_desk(extra_toml="...", **config_kw)`` -> running Desk."""
    desks: list[Desk] = []
    with backend(backend_kind, tmp_path, migrated=True) as be:
        def factory(extra: str = "", smtp: bool = True, workers: bool = True,
                    clock: Clock | None = None, **kw: Any) -> Desk:
            if clock is None:    # the wall clock: dev1 on rota this week, any week
                kw.setdefault("rota_start", this_weeks_monday())
            text = config_text(be, tmp_path / "data", extra=extra, **kw)
            desk = start_desk(parse_config(text, environ={}), smtp=smtp, workers=workers,
                              clock=clock)
            desks.append(desk)
            return desk

        factory.backend = be  # type: ignore[attr-defined]
        yield factory
        for d in desks:
            stop_desk(d)


@pytest.fixture
def sqlite_desk(tmp_path: Path) -> Iterator[Desk]:
    with backend("sqlite", tmp_path, migrated=True) as be:
        desk = start_desk(parse_config(config_text(be, tmp_path / "data",
                                                   rota_start=this_weeks_monday()),
                                       environ={}))
        yield desk
        stop_desk(desk)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command (the SMTP
    door's STARTTLS tests)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=120)
    return str(cert), str(key)
