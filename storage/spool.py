"""The SMTP door's spool: a small SQLite database of its own, for ``postdesk serve`` on an
SQLite desk.

Why: SQLite has one write lock per database, and the workers of ``serve`` take the desk
database's about eight times per processed email. A door that committed each email into
``raw_messages`` waited behind them, so a burst was answered at the pace of processing
(0.05-0.09x a do-nothing SMTP server, BENCHMARKS.md). The spool is written by the door
alone, so its commit waits for nothing but its own fsync: the door answers ``250`` at the
wire's pace, and the desk process moves each spooled email into ``raw_messages``
(``postdesk.ingest.spooled``) as fast as it can take the lock.

A row is what ``accept`` would have put into ``raw_messages``: the bytes in the row when
small (``desk.raw_in_database_bytes``), else in the blob store, published durably before
the row commits. The spool's COMMIT is synced (``PRAGMA synchronous=FULL``), so a spooled
email survives a power cut exactly as an accepted one does. A row is deleted only after
its ``raw_messages`` row committed durably: a crash in between leaves both, and moving the
row again finds its bytes accepted (``sha256`` is unique there) and adds nothing.

The table is not part of the desk's schema (no migration): the file is created on first
use, beside the blobs, readable by its owner only. It is written with the standard
library's ``sqlite3`` rather than through SQLAlchemy: one private table and a few fixed
statements need no dialect or ORM, and SQLAlchemy's execution path cost 0.24 ms CPU per
email here, a third of what the door may spend per email (BENCHMARKS.md, issue 11)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from postdesk.storage.db import create_private
from postdesk.workflow.rules.errors import UserError

SPOOL_FILE = "door-spool.sqlite3"
# Bumped when the table changes; a spool of another version is refused, never guessed at.
SPOOL_VERSION = 1

_CREATE = """CREATE TABLE IF NOT EXISTS spooled_mail (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    source TEXT NOT NULL,
    envelope_from TEXT,
    envelope_to TEXT NOT NULL,      -- JSON list
    received_at TEXT NOT NULL,      -- ISO 8601 with offset
    notify INTEGER NOT NULL,
    content BLOB                    -- NULL: the bytes are the blob named by sha256
)"""
_COLUMNS = ("id, sha256, size, source, envelope_from, envelope_to, received_at, notify, "
            "content")
_ADD = ("INSERT INTO spooled_mail (sha256, size, source, envelope_from, envelope_to, "
        "received_at, notify, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id")


@dataclass(frozen=True)
class SpooledMail:
    id: int
    sha256: str
    size: int
    source: str
    envelope_from: str | None
    envelope_to: list[str]
    received_at: datetime
    notify: bool
    content: bytes | None

    @classmethod
    def of_row(cls, row: tuple[Any, ...]) -> SpooledMail:
        id_, sha256, size, source, env_from, env_to, received, notify, content = row
        return cls(id_, sha256, size, source, env_from, json.loads(env_to),
                   datetime.fromisoformat(received), bool(notify), content)


class SpoolError(UserError):
    """The spool file cannot be used (a newer postdesk wrote it): said with its path."""


@dataclass
class _Waiting:
    """One email handed to ``Spool.add``, waiting for a commit that includes it."""

    values: tuple[object, ...]
    spool_id: int | None = None
    error: BaseException | None = None


class Spool:
    """One connection, shared by the threads of one process under a lock (the door's
    accepts run on several threads; SQLite would serialise their writes anyway).

    ``add`` commits in groups: while one thread's commit waits for its fsync, the emails
    of the connections that arrive meanwhile queue up, and the next thread to take the
    lock commits all of them at once, with one fsync (the others find theirs done). One
    connection pays exactly one commit per email; four share them.

    ``spools``: whether this connection spools emails (the door). The desk process opens
    the same file with False: it only reads rows and removes moved ones, and its removals
    are not synced (``synchronous=NORMAL``; in WAL mode the next synced commit or
    checkpoint makes them durable). One lost in a power cut only makes the next sweep move
    emails accepted already, which adds nothing; and a fsync per move on the file the
    door syncs for every 250 made the door's own fsyncs slower."""

    def __init__(self, path: Path | str, *, lock_timeout_s: float = 30.0,
                 spools: bool = True):
        self.path = Path(path)
        create_private(str(self.path))
        self._lock = threading.Lock()          # the connection, and so the writer
        self._queue_lock = threading.Lock()    # _waiting
        self._waiting: list[_Waiting] = []
        # isolation_level None: BEGIN IMMEDIATE is said where a transaction starts.
        self._db = sqlite3.connect(self.path, timeout=lock_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # The door's every commit synced (FULL): a spooled email is one it answered 250 for.
        self.spools = spools
        self._db.execute(f"PRAGMA synchronous={'FULL' if spools else 'NORMAL'}")
        with self._lock, self._immediate():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SPOOL_VERSION):
                raise SpoolError(f"{self.path}: a spool of version {version}, this "
                                 f"postdesk knows {SPOOL_VERSION}")
            self._db.execute(_CREATE)
            self._db.execute(f"PRAGMA user_version={SPOOL_VERSION}")

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """A write transaction, its lock taken at BEGIN (under ``_lock``)."""
        self._db.execute("BEGIN IMMEDIATE")
        with self._db:   # sqlite3: COMMIT when the block ends, ROLLBACK on an exception
            yield

    @classmethod
    def of_desk(cls, data_dir: Path | str, *, lock_timeout_s: float = 30.0,
                spools: bool = True) -> Spool:
        """The spool of the desk whose ``desk.data_dir`` this is."""
        return cls(Path(data_dir) / SPOOL_FILE, lock_timeout_s=lock_timeout_s,
                   spools=spools)

    def add(self, digest: str, size: int, source: str, envelope_from: str | None,
            envelope_to: Sequence[str], received_at: datetime, notify: bool,
            content: bytes | None) -> int:
        """Spool one email, committed durably before this returns; its id."""
        if not self.spools:
            raise RuntimeError("this spool connection only moves emails (spools=False): "
                               "its commits are not synced")
        values = (digest, size, source[:100], envelope_from, json.dumps(list(envelope_to)),
                  received_at.isoformat(), int(notify), content)
        mine = _Waiting(values)
        with self._queue_lock:
            self._waiting.append(mine)
        with self._lock:
            if mine.spool_id is None and mine.error is None:   # nobody committed it yet
                with self._queue_lock:
                    group, self._waiting = self._waiting, []
                self._commit(group)
        if mine.error is not None:
            raise mine.error
        assert mine.spool_id is not None
        return mine.spool_id

    def _commit(self, group: list[_Waiting]) -> None:
        """Insert ``group`` in one transaction (under ``_lock``); each learns its id, or
        every one the error that stopped the commit."""
        try:
            with self._immediate():
                ids = [int(self._db.execute(_ADD, w.values).fetchone()[0]) for w in group]
        except BaseException as exc:
            for waiting in group:
                waiting.error = exc
            if not isinstance(exc, Exception):
                raise
            return
        for waiting, spool_id in zip(group, ids, strict=True):
            waiting.spool_id = spool_id

    def rows(self, ids: Sequence[int]) -> list[SpooledMail]:
        """The emails of ``ids`` still spooled, oldest first (one moved already is gone)."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return self._select(f"SELECT {_COLUMNS} FROM spooled_mail WHERE id IN ({marks}) "
                            "ORDER BY id", tuple(ids))

    def oldest(self, limit: int = 500) -> list[SpooledMail]:
        return self._select(f"SELECT {_COLUMNS} FROM spooled_mail ORDER BY id LIMIT ?",
                            (limit,))

    def remove(self, ids: Iterable[int]) -> None:
        chosen = tuple(ids)
        if not chosen:
            return
        marks = ",".join("?" * len(chosen))
        with self._lock:
            # Autocommit; synced only on a connection that spools (see the class).
            self._db.execute(f"DELETE FROM spooled_mail WHERE id IN ({marks})", chosen)

    def count(self) -> int:
        return self.backlog()[0]

    def backlog(self) -> tuple[int, datetime | None]:
        """How many emails are spooled, and when the oldest of them was received."""
        with self._lock:
            count, first_id = self._db.execute(
                "SELECT count(*), min(id) FROM spooled_mail").fetchone()
            if not count:
                return 0, None
            (received,) = self._db.execute(
                "SELECT received_at FROM spooled_mail WHERE id = ?", (first_id,)).fetchone()
        return int(count), datetime.fromisoformat(received)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _select(self, sql: str, params: tuple[object, ...]) -> list[SpooledMail]:
        with self._lock:
            return [SpooledMail.of_row(row) for row in self._db.execute(sql, params)]
