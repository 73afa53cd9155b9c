"""The Alembic migrations build exactly the schema the models describe, on SQLite and
PostgreSQL: no model change ships without its migration."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from postdesk.storage.db import make_engine
from postdesk.storage.migrate import upgrade
from postdesk.storage.models import Base
from tests.support import backend, backend_param


@pytest.mark.parametrize("kind", [backend_param("sqlite"), backend_param("postgres-redis")])
def test_migrations_match_models(kind: str, tmp_path: Path) -> None:
    with backend(kind, tmp_path) as be:
        engine = make_engine(be.database_url)
        try:
            upgrade(engine)
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        finally:
            engine.dispose()
    assert diff == []


def test_the_pause_spans_migration_rebuilds_old_pauses_from_status_events(
        tmp_path: Path) -> None:
    """A desk upgraded from 0002 keeps its pauses: each wait in ``pending`` (from its
    ``status_changed`` events) becomes a span; a wait still going on, an open one."""
    from datetime import UTC, datetime

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from postdesk.storage.models import Event, Org, SlaPause, Ticket

    def at(hour: int) -> datetime:
        return datetime(2026, 11, 24, hour, tzinfo=UTC)

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        upgrade(engine, "0002")
        with Session(engine) as session, session.begin():
            org = Org(slug="baseco", name="Base Co", plan="base", active=True)
            session.add(org)
            session.flush()
            tickets = [Ticket(org_id=org.id, requester_email=f"c{i}@base.example",
                              subject="s", status="open", priority="P3", created_at=at(8),
                              updated_at=at(8), cc=[], chargeable=False) for i in range(2)]
            session.add_all(tickets)
            session.flush()
            moves = [(tickets[0], 9, "open", "pending"), (tickets[0], 11, "pending", "open"),
                     (tickets[1], 10, "new", "pending"), (tickets[0], 13, "open", "pending")]
            session.add_all(Event(ticket_id=t.id, at=at(h), kind="status_changed",
                                  actor="x", data={"old": old, "new": new})
                            for t, h, old, new in moves)
            first, second = tickets[0].id, tickets[1].id
        upgrade(engine)
        with Session(engine) as session:
            spans = [(p.ticket_id, p.started_at, p.ended_at) for p in session.scalars(
                select(SlaPause).order_by(SlaPause.ticket_id, SlaPause.started_at))]
        assert spans == [(first, at(9), at(11)), (first, at(13), None), (second, at(10), None)]
    finally:
        engine.dispose()


def test_the_declared_schema_head_is_alembics_head(tmp_path: Path) -> None:
    """``SCHEMA_HEAD`` says the newest migration's revision (so that a start on a current
    database imports no Alembic); a new migration that does not update it fails here."""
    from alembic.script import ScriptDirectory

    from postdesk.storage.migrate import SCHEMA_HEAD, alembic_config

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        alembic_head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()
    assert alembic_head is not None
    assert alembic_head == SCHEMA_HEAD


@pytest.mark.parametrize("kind", [backend_param("sqlite"), backend_param("postgres-redis")])
def test_is_up_to_date_before_at_and_after_head(kind: str, tmp_path: Path) -> None:
    """Empty, one revision behind, current, and a revision this code does not know."""
    from sqlalchemy import text

    from postdesk.storage.migrate import SCHEMA_HEAD as head
    from postdesk.storage.migrate import is_up_to_date, stored_revisions

    with backend(kind, tmp_path) as be:
        engine = make_engine(be.database_url)
        try:
            assert stored_revisions(engine) == ()
            assert not is_up_to_date(engine)
            upgrade(engine, "head-1")
            assert stored_revisions(engine) not in ((), (head,))
            assert not is_up_to_date(engine)
            upgrade(engine)
            assert stored_revisions(engine) == (head,)
            assert is_up_to_date(engine)
            with engine.begin() as conn:
                conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
            assert not is_up_to_date(engine)
        finally:
            engine.dispose()


@pytest.mark.parametrize("kind", [backend_param("sqlite"), backend_param("postgres-redis")])
def test_current_and_head_revision_say_what_alembic_says(kind: str, tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from postdesk.storage.migrate import alembic_config, current_revision, head_revision

    with backend(kind, tmp_path) as be:
        engine = make_engine(be.database_url)
        try:
            alembic_head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
            for target in (None, "head-2", "head"):
                if target:
                    upgrade(engine, target)
                with engine.connect() as conn:
                    expected = MigrationContext.configure(conn).get_current_revision()
                assert current_revision(engine) == expected
                assert head_revision() == alembic_head
        finally:
            engine.dispose()


def _with_percent_escapes(kind: str, database_url: str, tmp_path: Path) -> str:
    """The backend's URL with a part that is written with %-escapes: on SQLite a data
    directory named ``50%off``; on PostgreSQL a password with ``@`` and ``/`` in it (the
    test server trusts local connections, so any password is accepted)."""
    if kind == "sqlite":
        directory = tmp_path / "50%off"
        directory.mkdir()
        return f"sqlite:///{directory / 'postdesk.db'}"
    return make_url(database_url).set(password="p@ss/word").render_as_string(
        hide_password=False)


@pytest.mark.parametrize("kind", [backend_param("sqlite"), backend_param("postgres-redis")])
def test_upgrade_migrates_a_database_whose_url_has_percent_escapes(kind: str,
                                                                   tmp_path: Path) -> None:
    """Alembic reads its options through ConfigParser, where ``%`` starts an
    interpolation: a URL with an escaped character (a password with ``@``, a socket
    directory in the query, a path with ``%``) must still migrate, not raise."""
    from postdesk.storage.migrate import is_up_to_date

    with backend(kind, tmp_path) as be:
        url = _with_percent_escapes(kind, be.database_url, tmp_path)
        engine = make_engine(url)
        try:
            assert "%" in engine.url.render_as_string(hide_password=False)
            upgrade(engine)
            assert is_up_to_date(engine)
        finally:
            engine.dispose()
