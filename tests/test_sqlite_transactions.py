"""How the desk's SQLite transactions begin (``storage.db``): a writer takes the write lock
at BEGIN, a reader never does, a durable transaction syncs its commit and the next one
does not, and a lock that is not released in time is SQLAlchemy's OperationalError, which
the desk treats as transient. The BEGIN and the PRAGMA go straight to the driver."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from postdesk.storage.db import DURABLE, durable, make_engine, make_session_factory, read_only
from postdesk.workflow.pipeline.process import is_transient


def engine_in(tmp_path: Path, lock_timeout_s: float = 0.2):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'desk.db'}", lock_timeout_s=lock_timeout_s)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    return engine


def other_writer_can_begin(tmp_path: Path) -> bool:
    other = sqlite3.connect(tmp_path / "desk.db", isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()
    return True


def test_a_write_transaction_holds_the_write_lock_from_its_begin(tmp_path: Path) -> None:
    engine = engine_in(tmp_path)
    with engine.begin():
        assert not other_writer_can_begin(tmp_path)
    assert other_writer_can_begin(tmp_path)


def test_a_read_only_transaction_takes_no_write_lock(tmp_path: Path) -> None:
    sessions = make_session_factory(engine_in(tmp_path))
    with sessions() as session, read_only(session):
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
        assert other_writer_can_begin(tmp_path)


def test_a_durable_transaction_syncs_its_commit_and_the_next_one_does_not(
        tmp_path: Path) -> None:
    engine = engine_in(tmp_path)
    with durable(engine) as conn:
        assert conn.get_execution_options()[DURABLE] is True
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2     # FULL
    with engine.begin() as conn:
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1     # NORMAL
    with durable(engine) as conn:
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2


def test_a_lock_not_released_in_time_is_a_transient_operational_error(
        tmp_path: Path) -> None:
    engine = engine_in(tmp_path, lock_timeout_s=0.2)
    holder = sqlite3.connect(tmp_path / "desk.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError) as caught, engine.begin():
            pass
        assert "locked" in str(caught.value)
        assert is_transient(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with engine.begin() as conn:       # the pooled connection is usable afterwards
        conn.execute(text("INSERT INTO t VALUES (1)"))
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
