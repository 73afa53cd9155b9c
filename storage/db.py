"""Engine and sessions. SQLite (embedded default) runs in WAL mode with a busy timeout and
takes its write lock at BEGIN, so concurrent worker threads queue instead of failing
with "database is locked" half-way through a transaction."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Insert, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.errors import UserError

READ_ONLY = "postdesk_read_only"
# Execution option: this transaction's COMMIT must survive a power cut (SQLite: synchronous
# FULL for it; PostgreSQL's default synchronous_commit already is).
DURABLE = "postdesk_durable"
_SYNCHRONOUS = "postdesk_synchronous"
# Execution option of a statement that neither reads, changes nor refers to any row an
# import's batch may be holding back (``workflow.desk.rows.buffered_rows``), or answers
# for those rows itself: it runs without them being written first.
NEEDS_NO_BUFFERED_ROWS = "postdesk_needs_no_buffered_rows"
NO_BUFFERED_ROWS_NEEDED: dict[str, Any] = {NEEDS_NO_BUFFERED_ROWS: True}


class DatabaseUrlError(UserError, ValueError):
    pass


def desk_engine(config: Config) -> Engine:
    """The engine of the desk's database as ``[desk]`` sets it (URL, lock timeout)."""
    return make_engine(
        config.desk.database_url,
        lock_timeout_s=config.desk.database_lock_timeout.as_timedelta().total_seconds())


def make_engine(url: str, *, lock_timeout_s: float = 30.0, **kwargs: Any) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(f"desk.database_url: not a database URL: {url!r}") from None
    if parsed.drivername == "postgresql":
        # psycopg 3 is the driver we ship in the [postgres] extra.
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        if parsed.get_backend_name() == "sqlite":
            create_private(parsed.database)
            engine = create_engine(
                parsed, connect_args={"timeout": lock_timeout_s, "check_same_thread": False},
                **kwargs)
            _sqlite_pragmas(engine, int(lock_timeout_s * 1000))
        else:
            engine = create_engine(parsed, **{"pool_size": 10, "max_overflow": 20, **kwargs})
            _ping_when_idle(engine)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise DatabaseUrlError(
            f"desk.database_url: no driver for {parsed.drivername!r} ({exc}); for PostgreSQL "
            "install postdesk[postgres] and use postgresql+psycopg://"
        ) from None
    return engine


# A pooled connection is pinged before use only when it has sat unused this long: one that
# was just returned by a worker between two transactions of the same email is alive, and
# pinging it (SQLAlchemy's pool_pre_ping pings every checkout) was a round trip per
# transaction, about an eighth of a worker's time per email on PostgreSQL. A connection
# that broke within that second (a database restart) fails its first statement instead;
# SQLAlchemy then invalidates the pool and the caller's transient-error path retries.
PING_AFTER_IDLE_S = 1.0
_CHECKED_IN = "postdesk_checked_in"


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_CHECKED_IN)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return   # new, or back in the pool a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:   # noqa: BLE001 - any failure: this connection is dead
            # The pool discards it and checks out (or opens) another.
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def create_private(database: str | None) -> None:
    """A new SQLite database file is created readable by its owner only (0600): it holds
    every client's email. SQLite gives its -wal and -shm files the same mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's implicit one is
        # deferred, which upgrades to a write lock mid-transaction and can deadlock).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        # synchronous=NORMAL (set on connect) makes a commit survive a crashed process but
        # not a power cut; a transaction whose commit is a promise to someone (the door's,
        # before it answers 250) asks for FULL, which syncs the WAL at its COMMIT. The
        # setting is the connection's: switched only when it changes.
        level = "FULL" if options.get(DURABLE, False) else "NORMAL"
        pooled = conn.connection
        # Both statements go straight to the driver (sqlite3 runs them the same): through
        # ``exec_driver_sql`` each cost ~70 Python calls of SQLAlchemy's execution path,
        # four times per email. (So they pass no cursor-execute event or echo log.)
        driver = pooled.dbapi_connection
        statement = f"PRAGMA synchronous={level}"
        try:
            if pooled.info.get(_SYNCHRONOUS, "NORMAL") != level:
                driver.execute(statement)
                pooled.info[_SYNCHRONOUS] = level
            # A transaction that only reads takes no write lock (WAL readers never block).
            statement = "BEGIN" if options.get(READ_ONLY, False) else "BEGIN IMMEDIATE"
            driver.execute(statement)
        except sqlite3.Error as exc:
            # As SQLAlchemy would have raised it: a lock timeout is an OperationalError,
            # which the desk retries (``is_transient``).
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# The dialects on which work that needs no transaction of its own runs in the driver's
# autocommit mode (``read_only``, ``one_statement``). Not SQLite: SQLAlchemy's pysqlite
# dialect hands a connection back from autocommit with pysqlite's own implicit (deferred)
# BEGIN switched on again, which the "begin" listener above exists to keep off.
AUTOCOMMIT_DIALECTS = ("postgresql",)
_AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


@contextmanager
def read_only(session: Session) -> Iterator[Session]:
    """A transaction that only reads: on SQLite a deferred BEGIN, so it never holds the
    database's write lock (and its reads are one snapshot); on PostgreSQL each statement
    in autocommit mode. PostgreSQL's READ COMMITTED (the isolation the desk runs at) gives
    every statement of a transaction its own snapshot anyway, and a read takes no lock
    that a transaction would keep: a BEGIN and a COMMIT, two round trips and SQLAlchemy's
    bookkeeping for each, bought nothing."""
    with session.begin():
        options: dict[str, Any] = {READ_ONLY: True}
        if session.get_bind().dialect.name in AUTOCOMMIT_DIALECTS:
            options.update(_AUTOCOMMIT)
        session.connection(execution_options=options)
        yield session


@contextmanager
def plain_transaction(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """One transaction on a bare connection of the factory's engine, for writers that
    need no ORM (Core statements only): what a Session's transaction is, without the
    Session's own set-up and bookkeeping. Commits when the block ends, else rolls back.
    A factory bound to a connection that is in a transaction already (the unit tests'
    harness) gets a SAVEPOINT in it, as its sessions do."""
    bind = factory.kw["bind"]
    if isinstance(bind, Connection):
        with bind.begin_nested():
            yield bind
        return
    with bind.begin() as conn:
        yield conn


@contextmanager
def one_statement(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """A connection for work that is one statement per transaction (claiming a row with
    a conditional UPDATE, recording its new status): on PostgreSQL each statement commits
    on its own (autocommit: no BEGIN and COMMIT round trips, no Session); elsewhere the
    statements run in one transaction that commits when the block ends. Either way a
    statement's effect is committed when the block ends without an error."""
    engine = factory.kw["bind"]
    if isinstance(engine, Engine) and engine.dialect.name in AUTOCOMMIT_DIALECTS:
        with _autocommit(engine) as conn:
            yield conn
        return
    with plain_transaction(factory) as conn:
        yield conn


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    """A connection on which each statement commits on its own (PostgreSQL)."""
    with engine.connect() as conn:
        conn.execution_options(**_AUTOCOMMIT)
        yield conn


# The dialects with INSERT ... ON CONFLICT DO NOTHING (``insert_unless_exists``).
ON_CONFLICT_DIALECTS = ("sqlite", "postgresql")


def insert_unless_exists(dialect: str, table: Any, column: str) -> Insert | None:
    """``INSERT ... ON CONFLICT (column) DO NOTHING`` into ``table`` (a table or mapped
    class) for ``dialect``; None where the dialect has no such statement (the caller looks
    up first). One statement where a look-up and an insert would take two, and a row
    being written by a concurrent transaction is waited for, not duplicated."""
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[column])
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[column])
    return None


@contextmanager
def durable(engine: Engine) -> Iterator[Connection]:
    """A transaction whose COMMIT survives a power cut (``DURABLE``): for a caller that
    acknowledges something once it has committed (the ingest door's 250)."""
    with engine.connect() as conn:
        conn.execution_options(**{DURABLE: True})
        with conn.begin():
            yield conn


@contextmanager
def durable_statements(engine: Engine) -> Iterator[Connection]:
    """``durable`` for a writer whose every statement stands alone (the door's accept: one
    ``INSERT ... ON CONFLICT ... RETURNING``, then at most a look-up): on PostgreSQL each
    commits on its own (autocommit), as durably as a COMMIT and before its answer comes
    back, so no BEGIN and COMMIT round trips travel with it; elsewhere one durable
    transaction."""
    if engine.dialect.name in AUTOCOMMIT_DIALECTS:
        with _autocommit(engine) as conn:
            yield conn
        return
    with durable(engine) as conn:
        yield conn


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session
