"""The unit tier's database: SQLite in a temporary directory, the schema migrated once per
test module, and every test inside a transaction that is rolled back at its end.

SQLAlchemy 2.0's "join a Session into an external transaction": the test's connection
begins the outer transaction; every Session made by ``sessions`` (the test's own and the
ones desk code opens itself, e.g. ``render_drafts``) is bound to that connection with
``join_transaction_mode="create_savepoint"``, so their commits only release SAVEPOINTs
and nothing a test writes outlives it. No SMTP, no workers, no broker, no PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, sessionmaker

from postdesk.mail.render import Renderer
from postdesk.storage.blobs import BlobStore
from postdesk.storage.db import make_engine
from postdesk.storage.directory import org_by_slug, staff_by_email, sync_from_config
from postdesk.storage.migrate import upgrade
from postdesk.storage.models import Message, Ticket
from postdesk.workflow.desk.outbox import OutboxWriter
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.clock import ManualClock
from postdesk.workflow.rules.config import Config, parse_config
from postdesk.workflow.rules.sla import build_calendars
from tests.support import BASECO, Backend, config_text

# A Tuesday, 10:00 in London (GMT in November): office hours, week 0 of the test rota
# (dev1 on duty).
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SECRET = b"test"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path = tmp_path_factory.mktemp("unit-db") / "postdesk.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            outer.rollback()


@pytest.fixture
def sessions(connection: Connection) -> sessionmaker[Session]:
    """Sessions on the test's connection: each one's transaction is a SAVEPOINT."""
    return sessionmaker(bind=connection, join_transaction_mode="create_savepoint",
                        expire_on_commit=False)


@pytest.fixture
def config_extra() -> str:
    """TOML added to the test config (orgs, plans); a test module overrides this fixture
    to describe the desk it needs."""
    return BASECO


@pytest.fixture
def config(engine: Engine, tmp_path: Path, config_extra: str) -> Config:
    be = Backend("sqlite", engine.url.render_as_string(), "stub://", "pdunit")
    text = config_text(be, tmp_path / "data", smtp_port=2525, extra=config_extra)
    return parse_config(text, environ={})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def services(config: Config, clock: ManualClock, sessions: sessionmaker[Session],
             tmp_path: Path) -> Services:
    return Services(config=config, clock=clock, sessions=sessions,
                    blobs=BlobStore(tmp_path / "blobs"), secret=SECRET,
                    calendars=build_calendars(config), renderer=Renderer(None))


@pytest.fixture
def session(sessions: sessionmaker[Session], config: Config) -> Iterator[Session]:
    """The test's own session, with the config's orgs, contacts and staff in the
    database."""
    with sessions() as s:
        sync_from_config(s, config)
        s.flush()
        yield s


@pytest.fixture
def outbox(session: Session, services: Services, clock: ManualClock) -> OutboxWriter:
    return OutboxWriter(session, services, clock.now())


@pytest.fixture
def new_ticket(session: Session, clock: ManualClock) -> Callable[..., Ticket]:
    """``new_ticket(org="clientco", requester=..., **columns)``: a ticket row, opened now."""

    def make(org: str = "clientco", requester: str = "alice@client.example", *,
             subject: str = "Website contact form broken", **columns: object) -> Ticket:
        org_row = org_by_slug(session, org)
        assert org_row is not None, f"no org {org!r} in the test config"
        values: dict[str, object] = {"status": "new", "priority": "P3",
                                     "created_at": clock.now(), "updated_at": clock.now(),
                                     "cc": []}
        values.update(columns)
        ticket = Ticket(org_id=org_row.id, requester_email=requester, subject=subject,
                        **values)
        session.add(ticket)
        session.flush()
        return ticket

    return make


@pytest.fixture
def add_message(session: Session, clock: ManualClock) -> Callable[..., Message]:
    """``add_message(ticket, message_id, from_addr=..., direction="in", kind="public",
    staff=None)``: an email row on a ticket."""

    serial = itertools.count(1)

    def make(ticket: Ticket, message_id: str | None, *, from_addr: str | None = None,
             direction: str = "in", kind: str = "public", staff: str | None = None
             ) -> Message:
        author = staff_by_email(session, staff) if staff else None
        message = Message(
            ticket_id=ticket.id, direction=direction, kind=kind,
            dedupe_key=f"test:{next(serial)}:{message_id}",
            message_id=message_id, references=[],
            from_addr=from_addr or (staff if staff else ticket.requester_email),
            author_staff_id=author.id if author else None, to=[], cc=[],
            subject=ticket.subject, text="", stripped_text="", created_at=clock.now())
        session.add(message)
        session.flush()
        return message

    return make


@pytest.fixture
def statements(session: Session) -> Iterator[list[str]]:
    """The SQL statements the session's connection runs while the test does."""
    seen: list[str] = []
    connection = session.connection()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    yield seen
    event.remove(connection, "before_cursor_execute", record)
