"""The one door every email comes in by (SMTP, IMAP, import): ``accept`` makes the raw
bytes durable and commits a ``raw_messages`` row before it returns, so the caller may
acknowledge the email (SMTP 250, IMAP move) only once it survives a crash or a power cut.

Accepting the same bytes again returns the existing row: re-delivery after a lost
acknowledgement, an IMAP re-scan or a re-run import create nothing new.

The path is kept short because the SMTP door answers at the wire's pace: the bytes are
hashed once; an email up to ``raw_in_database_bytes`` travels in the row itself, so
accepting it is one statement in one short transaction whose COMMIT is synced (on SQLite,
synchronous FULL for that transaction; on PostgreSQL the statement commits on its own, in
one round trip with no BEGIN or COMMIT): one fsync, where a file costs three (the blob, its
directory, a new directory's parent). A larger email is published to the blob store first
(file and directory fsynced) so a row never points at bytes that are not on disk (a blob
without a row, from a crash in between, is harmless and reused by the retry). The
statement is ``INSERT ... ON CONFLICT (sha256) DO NOTHING RETURNING`` on SQLite and
PostgreSQL, followed by a look-up only when the bytes were accepted before."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Engine, Insert, Table, bindparam, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from postdesk.storage.blobs import BlobStore, sha256_hex
from postdesk.storage.db import (
    DURABLE,
    ON_CONFLICT_DIALECTS,
    durable,
    durable_statements,
    insert_unless_exists,
)
from postdesk.storage.models import RawMessage
from postdesk.storage.raw_store import in_row


@dataclass(frozen=True)
class Envelope:
    mail_from: str | None = None
    rcpt_tos: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class AcceptResult:
    raw_id: int
    created: bool          # False: these exact bytes were accepted before
    status: str            # the raw message's status now (pending for a new one)

    @property
    def queued_as(self) -> str:
        return f"raw-{self.raw_id}"


class Receipt(Protocol):
    """What the SMTP door names in its 250: the raw message, or the door's spool row
    (``postdesk.ingest.spooled``)."""

    @property
    def queued_as(self) -> str: ...


# The door as the adapters are handed it (``App.accept``: commit, then enqueue the job), so
# SMTP and IMAP ingest never reach for the pipeline or the App themselves.
AcceptFn = Callable[[bytes, Envelope, str], AcceptResult]
# What the SMTP door needs of it: a commit, then something to name in the 250.
ReceiptFn = Callable[[bytes, Envelope, str], Receipt]

_RAW = cast(Table, RawMessage.__table__)
# Built once: executed with a parameter dict, the compiled form is reused from SQLAlchemy's
# cache without building and keying a new statement per email.
# For one row or many (the rows written say which digests they are).
_UPSERTS: dict[str, Any] = {
    dialect: cast(Insert, insert_unless_exists(dialect, _RAW, "sha256")).returning(
        _RAW.c.id, _RAW.c.sha256)
    for dialect in ON_CONFLICT_DIALECTS}
_FIND = select(_RAW.c.id, _RAW.c.status).where(_RAW.c.sha256 == bindparam("digest"))
_FIND_MANY = select(_RAW.c.id, _RAW.c.sha256, _RAW.c.status).where(
    _RAW.c.sha256.in_(bindparam("digests", expanding=True)))


def _row(digest: str, raw: bytes, envelope: Envelope, source: str, now: datetime,
         notify: bool, row_limit: int) -> dict[str, Any]:
    return {"sha256": digest, "size": len(raw), "source": source[:100],
            "envelope_from": envelope.mail_from, "envelope_to": list(envelope.rcpt_tos),
            "received_at": now, "status": "pending", "notify": notify,
            "content": raw if in_row(len(raw), row_limit) else None}


def accept(sessions: sessionmaker[Session], blobs: BlobStore, raw: bytes, envelope: Envelope,
           source: str, *, now: datetime, notify: bool = True, row_limit: int = 0
           ) -> AcceptResult:
    """``row_limit``: the largest email kept in its row (``desk.raw_in_database_bytes``)."""
    digest = sha256_hex(raw)
    values = _row(digest, raw, envelope, source, now, notify, row_limit)
    if values["content"] is None:
        # Blob first, durably: a row must never point at bytes that are not on disk. For
        # bytes accepted before this only checks that the blob is there (a retry after a
        # crash between blob and row finds the blob and adds the row).
        blobs.put(raw, digest)
    with _transaction(sessions) as conn:
        return insert_raw(conn, values)


def insert_raw(conn: Connection, values: dict[str, Any]) -> AcceptResult:
    """Insert one ``raw_messages`` row (``values``: its columns, ``status`` pending) in
    the caller's transaction, unless its bytes (``sha256``) were accepted before: then
    the existing row."""
    upsert = _UPSERTS.get(conn.dialect.name)
    if upsert is None:
        return _insert_portable(conn, values["sha256"], values)
    row = conn.execute(upsert, values).first()
    if row is not None:
        return AcceptResult(raw_id=row.id, created=True, status="pending")
    # Accepted before (or by another door a moment ago: ON CONFLICT waited for it).
    return _existing(conn, values["sha256"])


def accept_many(sessions: sessionmaker[Session], blobs: BlobStore, raws: Sequence[bytes],
                envelope: Envelope, source: str, *, now: datetime, notify: bool = True,
                row_limit: int = 0,
                publish: Callable[[Callable[[str], object], Sequence[str]], object] | None = None
                ) -> list[AcceptResult | None]:
    """``accept`` for a batch (``postdesk import``), with the same guarantees: one look-up
    of the known digests, the new blobs published durably first (``publish`` may map the
    writes over a thread pool so their fsyncs overlap), then one transaction inserting
    every new row with one ON CONFLICT statement. A message whose bytes came earlier
    in the same batch gets None. Where no upsert exists, each message goes through
    ``accept``."""
    digests = [sha256_hex(raw) for raw in raws]
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name not in _UPSERTS:
        first: set[str] = set()
        out: list[AcceptResult | None] = []
        for raw, digest in zip(raws, digests, strict=True):
            out.append(None if digest in first else accept(
                sessions, blobs, raw, envelope, source, now=now, notify=notify,
                row_limit=row_limit))
            first.add(digest)
        return out
    unique = list(dict.fromkeys(digests))   # first occurrences, in input order
    with bind.connect() as conn:
        known = {row.sha256: AcceptResult(row.id, False, row.status)
                 for row in conn.execute(_FIND_MANY, {"digests": unique})}
    raw_of = dict(zip(digests, raws, strict=True))
    new = [d for d in unique if d not in known]
    files = [d for d in new if not in_row(len(raw_of[d]), row_limit)]

    def put(digest: str) -> object:
        return blobs.put(raw_of[digest], digest)

    if publish is not None and len(files) > 1:
        publish(put, files)
    else:
        for digest in files:
            put(digest)
    if new:
        with durable(bind) as conn:
            # One INSERT of all the rows (SQLAlchemy's "insertmanyvalues").
            written = {row.sha256: row.id for row in conn.execute(
                _UPSERTS[bind.dialect.name],
                [_row(digest, raw_of[digest], envelope, source, now, notify, row_limit)
                 for digest in new])}
            for digest in new:
                # Not written: taken by another door between the look-up and here.
                known[digest] = (AcceptResult(raw_id=written[digest], created=True,
                                              status="pending")
                                 if digest in written else _existing(conn, digest))
    seen: set[str] = set()
    results: list[AcceptResult | None] = []
    for digest in digests:
        results.append(None if digest in seen else known[digest])
        seen.add(digest)
    return results


def _insert_portable(conn: Connection, digest: str, values: dict[str, Any]) -> AcceptResult:
    """Other databases: look up, then insert in a savepoint (a concurrent insert of the
    same bytes fails the unique key and is read back)."""
    if conn.execute(_FIND, {"digest": digest}).first() is not None:
        return _existing(conn, digest)
    try:
        with conn.begin_nested():
            key = conn.execute(insert(_RAW), values).inserted_primary_key
    except IntegrityError:
        return _existing(conn, digest)
    assert key is not None
    return AcceptResult(raw_id=int(key[0]), created=True, status="pending")


def _existing(conn: Connection, digest: str) -> AcceptResult:
    row = conn.execute(_FIND, {"digest": digest}).one()
    return AcceptResult(raw_id=row.id, created=False, status=row.status)


@contextmanager
def _transaction(sessions: sessionmaker[Session]) -> Iterator[Connection]:
    """One short durable transaction, on PostgreSQL no transaction at all: the upsert
    commits on its own (``durable_statements``: one round trip instead of three). On the
    engine the session factory is bound to when there is one (the door needs no ORM
    session: a Core connection is the shorter path to one statement); else in a session,
    so a factory bound to a test's connection is honoured."""
    bind = sessions.kw.get("bind")
    if isinstance(bind, Engine):
        with durable_statements(bind) as conn:
            yield conn
        return
    with sessions() as session, session.begin():
        yield session.connection(execution_options={DURABLE: True})

