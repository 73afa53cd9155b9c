"""PostgreSQL connections are pinged only after sitting idle in the pool: a worker that
returns a connection and takes it again for the next transaction of the same email pays
no round trip, while a connection that died while idle (a database restart, a killed
backend) is replaced before anyone uses it. One that dies in the instant between two
transactions fails its first statement as a disconnect, and the next checkout is fresh."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from postdesk.storage import db
from tests.support import backend

pytestmark = pytest.mark.services


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with backend("postgres-redis", tmp_path) as be:
        engine = db.make_engine(be.database_url, pool_size=1, max_overflow=0)
        yield engine
        engine.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    real = engine.dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        seen.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(engine: Engine, pid: int) -> None:
    other = db.make_engine(engine.url.render_as_string(hide_password=False))
    try:
        with other.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
    finally:
        other.dispose()


def test_a_connection_used_again_at_once_is_not_pinged(
        engine: Engine, pings: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # "At once": well within the idle window, however slowly a loaded machine runs.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 60.0)
    first = _backend_pid(engine)
    for _ in range(5):
        assert _backend_pid(engine) == first
    assert pings == []


def test_a_connection_that_died_while_idle_is_replaced_before_use(
        engine: Engine, pings: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    dead = _backend_pid(engine)
    _terminate(engine, dead)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)   # it has been idle "long enough"
    assert _backend_pid(engine) != dead
    assert len(pings) == 1


def test_one_that_died_a_moment_ago_fails_as_a_disconnect_and_the_next_is_fresh(
        engine: Engine, pings: list[Any]) -> None:
    dead = _backend_pid(engine)
    _terminate(engine, dead)
    with pytest.raises(DBAPIError) as failure, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert failure.value.connection_invalidated   # the pipeline's transient-error path
    assert _backend_pid(engine) != dead
    assert pings == []
