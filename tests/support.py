"""Test support: configs, backends (SQLite+StubBroker, PostgreSQL+Redis, PostgreSQL+RabbitMQ),
free ports, emails, waiting. Real servers throughout: no mocks of things that can run."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.ports import free_port

REQUIRE_SERVICES = os.environ.get("POSTDESK_REQUIRE_SERVICES") == "1"
HYPOTHESIS_PROFILE_ENV = "POSTDESK_HYPOTHESIS_PROFILE"
WORKER_THREADS = 4

BASE_CONFIG = """
[desk]
name = "Acme Digital Support"
support_addresses = ["support@desk.example"]
ticket_prefix = "PD"
database_url = "{database_url}"
broker_url = "{broker_url}"
data_dir = "{data_dir}"
secret = "test-secret-key"
queue_namespace = "{namespace}"
worker_threads = {worker_threads}
database_lock_timeout = "{lock_timeout}"
{desk_extra}

[smtp_in]
host = "127.0.0.1"
port = {smtp_port}
max_message_bytes = {max_bytes}

[calendars.uk-office]
timezone = "Europe/London"
holidays = {{ country = "GB", subdiv = "ENG" }}
closed = ["2026-12-24"]

[calendars.uk-office.hours]
mon = "08:00-18:00"
tue = "08:00-18:00"
wed = "08:00-18:00"
thu = "08:00-18:00"
fri = "08:00-18:00"

[calendars.always]
always_open = true

[plans.base]
calendar = "uk-office"
first_response = {{ P1 = "5h", P2 = "8h", P3 = "10h" }}
next_update = {{ P1 = "4h", P2 = "8h" }}
resolution = {{ P1 = "2d" }}
monthly_allowance = "2h"
rollover_cap = "4h"

[plans.enterprise]
calendar = "uk-office"
priority_calendar = {{ P1 = "always" }}
first_response = {{ P1 = "1h", P2 = "2h", P3 = "5h" }}
monthly_allowance = "30h"
rollover_cap = "60h"

[[orgs]]
slug = "clientco"
name = "Client Co"
plan = "enterprise"
domains = ["client.example"]
escalation_keyword = "CLIENTCO-URGENT"
contacts = [ {{ email = "ops@partner.example", name = "Ops", can_approve = true }} ]

[[staff]]
email = "dev1@agency.example"
name = "Dev One"
role = "agent"

[[staff]]
email = "dev2@agency.example"
name = "Dev Two"
role = "lead"

[[staff]]
email = "boss@agency.example"
name = "The Boss"
role = "manager"

[rota]
start = "{rota_start}"
weeks = ["dev1@agency.example", "dev2@agency.example"]

[digest]
managers = ["boss@agency.example"]

[scheduler]
scan_interval = "1s"
sweep_grace = "2s"
{extra}
"""


# A second org on the Base plan (office hours, 2h monthly allowance, 4h rollover cap).
BASECO = """
[[orgs]]
slug = "baseco"
name = "Base Co"
plan = "base"
domains = ["base.example"]
escalation_keyword = "BASECO-999"
"""


def service_or_skip(var: str, what: str) -> str:
    value = os.environ.get(var)
    if value:
        return value
    if REQUIRE_SERVICES:
        pytest.fail(f"{var} is not set but POSTDESK_REQUIRE_SERVICES=1: {what} is required")
    pytest.skip(f"{var} not set: {what} tests skipped")


def backend_param(kind: str) -> Any:
    """A backend kind as a pytest parameter: all but SQLite+StubBroker need real servers,
    so they carry the ``services`` marker (``-m "not services"`` leaves them out)."""
    return pytest.param(kind, marks=() if kind == "sqlite" else pytest.mark.services, id=kind)


def examples(ci: int) -> int:
    """``max_examples`` for a property that runs more examples than Hypothesis' default:
    ``ci`` under the "ci" profile, scaled down like every property under "fast" (see the
    profiles in tests/conftest.py)."""
    return max(1, ci * settings.default.max_examples // 100)


@dataclass
class Backend:
    name: str
    database_url: str
    broker_url: str
    namespace: str


# Databases on the current schema, for desks that would migrate a new database first:
# the schema is migrated once per test session (per xdist worker) into a template, and each
# test gets a copy (PostgreSQL: CREATE DATABASE ... TEMPLATE; SQLite: the file). Alembic
# runs ~0.5 s per PostgreSQL database and ~0.1 s per SQLite one; a copy costs no more than
# the empty database did. The desk still runs its upgrade, which finds nothing to do.
# tests/test_migrations.py and the CLI tests migrate empty databases themselves.
_templates: dict[str, str] = {}


def _admin_conninfo(admin_url: str) -> str:
    return admin_url.replace("postgresql+psycopg://", "postgresql://")


def _postgres_template(admin_url: str) -> str:
    """The name of this session's migrated template database, made on first use."""
    if "postgres" not in _templates:
        import psycopg

        from postdesk.storage.db import make_engine
        from postdesk.storage.migrate import upgrade

        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        name = f"pdtemplate_{worker}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(_admin_conninfo(admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        engine = make_engine(f"{admin_url.rsplit('/', 1)[0]}/{name}")
        try:
            upgrade(engine)
        finally:
            engine.dispose()   # CREATE DATABASE ... TEMPLATE needs it unconnected
        _templates["postgres"] = name
    return _templates["postgres"]


def _sqlite_template() -> Path:
    """This session's migrated SQLite file, made on first use."""
    if "sqlite" not in _templates:
        from postdesk.storage.db import make_engine
        from postdesk.storage.migrate import upgrade

        path = Path(tempfile.mkdtemp(prefix="pd-sqlite-template-")) / "postdesk.db"
        engine = make_engine(f"sqlite:///{path}")
        try:
            upgrade(engine)
        finally:
            engine.dispose()   # the last connection out checkpoints the WAL into the file
        _templates["sqlite"] = str(path)
    return Path(_templates["sqlite"])


def drop_templates() -> None:
    """Remove this session's template databases (tests/conftest.py, at session end)."""
    if "sqlite" in _templates:
        shutil.rmtree(Path(_templates.pop("sqlite")).parent, ignore_errors=True)
    name = _templates.pop("postgres", None)
    admin_url = os.environ.get("POSTDESK_TEST_POSTGRES_URL")
    if name and admin_url:
        import psycopg

        with contextlib.suppress(psycopg.Error), \
                psycopg.connect(_admin_conninfo(admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_database(admin_url: str, *, migrated: bool = False) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards: empty, or with
    ``migrated`` on the current schema."""
    import psycopg

    name = f"pdtest_{uuid.uuid4().hex[:12]}"
    conninfo = _admin_conninfo(admin_url)
    try:
        template = f' TEMPLATE "{_postgres_template(admin_url)}"' if migrated else ""
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{template}')
    except psycopg.OperationalError as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL at {admin_url} unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    base = conninfo.rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{base.removeprefix('postgresql://')}/{name}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def backend(kind: str, tmp_path: Path, *, migrated: bool = False) -> Iterator[Backend]:
    """The database and broker of one test. ``migrated``: the database starts on the
    current schema (a copy of this session's template) instead of empty."""
    ns = f"pdt{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        db = tmp_path / "postdesk.db"
        if migrated:
            # Owner-only, as the desk creates its own database file (storage.db).
            with open(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                out.write(_sqlite_template().read_bytes())
        yield Backend(kind, f"sqlite:///{db}", "stub://", ns)
        return
    pg = service_or_skip("POSTDESK_TEST_POSTGRES_URL", "PostgreSQL")
    if kind == "postgres-redis":
        broker = service_or_skip("POSTDESK_TEST_REDIS_URL", "Redis")
    elif kind == "postgres-rabbitmq":
        broker = service_or_skip("POSTDESK_TEST_RABBITMQ_URL", "RabbitMQ")
    else:
        raise ValueError(kind)
    with postgres_database(pg, migrated=migrated) as db_url:
        yield Backend(kind, db_url, broker, ns)
        _purge_broker(broker, ns)


def _purge_broker(url: str, ns: str) -> None:
    """Leave no test queues behind on the shared Redis/RabbitMQ."""
    try:
        if url.startswith("redis"):
            import redis

            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(f"dramatiq:{ns}-*"))
            if keys:
                client.delete(*keys)
        elif url.startswith("amqp"):
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(url))
            channel = conn.channel()
            for suffix in ("inbound", "outbound"):
                for q in (f"{ns}-{suffix}", f"{ns}-{suffix}.DQ", f"{ns}-{suffix}.XQ"):
                    channel.queue_delete(q)
            conn.close()
    except Exception:  # cleanup is best effort; a leftover queue harms no later test
        pass


ROTA_START = date(2026, 11, 23)


def this_weeks_monday(today: date | None = None) -> date:
    """The Monday of the current UTC week: rota weeks run Monday to Sunday."""
    day = today or datetime.now(UTC).date()
    return day - timedelta(days=day.weekday())


def config_text(be: Backend, data_dir: Path, *, smtp_port: int = 0, max_bytes: int = 200_000,
                extra: str = "", lock_timeout: str = "30s", desk_extra: str = "",
                rota_start: date = ROTA_START) -> str:
    """``rota_start``: the Monday dev1's rota week begins. Tests on a ManualClock keep the
    fixed default; desks on the wall clock pass ``this_weeks_monday()`` so that dev1 is
    on rota whatever week the suite runs in."""
    return BASE_CONFIG.format(rota_start=rota_start.isoformat(),
                              database_url=be.database_url, broker_url=be.broker_url,
                              data_dir=data_dir, namespace=be.namespace,
                              smtp_port=smtp_port or free_port(), max_bytes=max_bytes,
                              extra=extra, lock_timeout=lock_timeout, desk_extra=desk_extra,
                              worker_threads=WORKER_THREADS)


def make_email(*, sender: str = "alice@client.example", to: str = "support@desk.example",
               subject: str = "Website contact form broken", body: str = "Hello, it broke.",
               message_id: str | None = None, in_reply_to: str | None = None,
               references: str | None = None, headers: dict[str, str] | None = None,
               date: datetime | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain=sender.split("@")[1])
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
