"""The SMTP door's spool (storage/spool.py, ingest/spooled.py): what serve's door commits
on an SQLite desk before it answers 250, and how the desk moves it into ``raw_messages``
— on a real spool file, into a real desk database (SQLite, and PostgreSQL with the
services), with the crashes in between."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from postdesk.ingest.accept import Envelope
from postdesk.ingest.spooled import move_spooled, spool_email
from postdesk.storage.blobs import BlobStore
from postdesk.storage.db import make_engine
from postdesk.storage.models import Base, RawMessage
from postdesk.storage.spool import SPOOL_FILE, Spool, SpoolError
from tests.support import backend, backend_param, make_email

NOW = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
ENVELOPE = Envelope("carol@client.example", ("support@desk.example",))
ROW_LIMIT = 4096


@pytest.fixture(params=[backend_param("sqlite"), backend_param("postgres-redis")])
def desk_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with backend(request.param, tmp_path, migrated=True) as be:
        engine = make_engine(be.database_url)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool.of_desk(tmp_path / "data")
    try:
        yield spool
    finally:
        spool.close()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore.of_desk(tmp_path / "data")


def raw_rows(engine: Engine) -> list[tuple[str, str, str, bytes | None]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(   # type: ignore[misc]
            select(RawMessage.sha256, RawMessage.status, RawMessage.source,
                   RawMessage.content).order_by(RawMessage.id))]


def email(subject: str, body: str = "The checkout page is down.") -> bytes:
    return make_email(sender="carol@client.example", subject=subject, body=body).as_bytes()


def test_a_spooled_email_is_committed_in_the_spool_file_with_everything_accept_would_keep(
        tmp_path: Path, spool: Spool, blobs: BlobStore) -> None:
    raw = email("Checkout down")
    spooled = spool_email(spool, blobs, raw, ENVELOPE, "smtp", now=NOW, row_limit=ROW_LIMIT)
    assert spooled.queued_as == f"spool-{spooled.spool_id}"
    # Another process (the desk) opening the same file sees it, whole.
    other = Spool.of_desk(tmp_path / "data")
    try:
        [row] = other.oldest()
    finally:
        other.close()
    assert (row.id, row.content, row.size, row.source) == (spooled.spool_id, raw, len(raw),
                                                           "smtp")
    assert (row.envelope_from, row.envelope_to) == ("carol@client.example",
                                                    ["support@desk.example"])
    assert row.received_at == NOW and row.notify is True
    assert os.stat(tmp_path / "data" / SPOOL_FILE).st_mode & 0o777 == 0o600


def test_a_large_email_is_a_durable_blob_before_its_spool_row_names_it(
        spool: Spool, blobs: BlobStore) -> None:
    raw = email("Log attached", body="log line\n" * 1000)
    spool_email(spool, blobs, raw, ENVELOPE, "smtp", now=NOW, row_limit=ROW_LIMIT)
    [row] = spool.oldest()
    assert row.content is None
    assert blobs.get(row.sha256) == raw


def test_moved_emails_are_raw_messages_pending_and_leave_the_spool(
        desk_engine: Engine, spool: Spool, blobs: BlobStore) -> None:
    small, large = email("Checkout down"), email("Log attached", body="log line\n" * 1000)
    ids = [spool_email(spool, blobs, raw, ENVELOPE, "smtp", now=NOW,
                       row_limit=ROW_LIMIT).spool_id for raw in (small, large)]
    moved = move_spooled(desk_engine, spool, spool.rows(ids))
    assert [m.spool_id for m in moved] == ids
    assert [(m.result.created, m.result.status) for m in moved] == [(True, "pending")] * 2
    rows = raw_rows(desk_engine)
    assert [(status, source) for _, status, source, _ in rows] == [("pending", "smtp")] * 2
    assert rows[0][3] == small and rows[1][3] is None     # the large one stays a blob
    assert spool.count() == 0
    with desk_engine.connect() as conn:
        received = conn.scalar(select(RawMessage.received_at).where(
            RawMessage.id == moved[0].result.raw_id))
    assert received == NOW        # the door's time, not the move's


def test_the_desk_moves_through_a_connection_of_its_own_that_never_spools_nor_syncs(
        tmp_path: Path, desk_engine: Engine, spool: Spool, blobs: BlobStore) -> None:
    """The door syncs every commit (a 250 waits for it); the desk's removal of moved
    emails needs no fsync of its own on the same file (a lost one only makes the next
    sweep move an email accepted already) and must not slow the door's."""
    raw = email("Checkout down")
    spool_id = spool_email(spool, blobs, raw, ENVELOPE, "smtp", now=NOW,
                           row_limit=ROW_LIMIT).spool_id
    desk_side = Spool.of_desk(tmp_path / "data", spools=False)
    try:
        assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2        # FULL
        assert desk_side._db.execute("PRAGMA synchronous").fetchone()[0] == 1    # NORMAL
        [moved] = move_spooled(desk_engine, desk_side, desk_side.rows([spool_id]))
        assert moved.result.created and spool.count() == 0
        with pytest.raises(RuntimeError, match="only moves emails"):
            desk_side.add("0" * 64, 1, "smtp", None, [], NOW, True, b"x")
    finally:
        desk_side.close()
    assert raw_rows(desk_engine)[0][3] == raw


def test_the_same_bytes_spooled_twice_become_one_raw_message(
        desk_engine: Engine, spool: Spool, blobs: BlobStore) -> None:
    """A client that retried after losing our 250: both copies were spooled."""
    raw = email("Sent twice")
    for _ in range(2):
        spool_email(spool, blobs, raw, ENVELOPE, "smtp", now=NOW, row_limit=ROW_LIMIT)
    moved = move_spooled(desk_engine, spool, spool.oldest())
    assert [m.result.created for m in moved] == [True, False]
    assert moved[0].result.raw_id == moved[1].result.raw_id
    assert len(raw_rows(desk_engine)) == 1 and spool.count() == 0


class LostDelete(Spool):
    """A spool whose delete never happens: the desk killed (or the power cut) after the
    ``raw_messages`` commit and before the spool rows were removed."""

    def remove(self, ids: object) -> None:
        raise OSError("killed before the spool rows were removed")


def test_a_crash_between_the_raw_commit_and_the_spool_delete_adds_nothing_when_moved_again(
        tmp_path: Path, desk_engine: Engine, spool: Spool, blobs: BlobStore) -> None:
    spool_email(spool, blobs, email("Crash in between"), ENVELOPE, "smtp", now=NOW,
                row_limit=ROW_LIMIT)
    crashing = LostDelete.of_desk(tmp_path / "data")
    try:
        with pytest.raises(OSError):
            move_spooled(desk_engine, crashing, crashing.oldest())
    finally:
        crashing.close()
    assert len(raw_rows(desk_engine)) == 1 and spool.count() == 1
    [again] = move_spooled(desk_engine, spool, spool.oldest())
    assert again.result.created is False and again.result.status == "pending"
    assert len(raw_rows(desk_engine)) == 1 and spool.count() == 0


def test_a_failed_move_leaves_every_email_spooled(
        tmp_path: Path, spool: Spool, blobs: BlobStore) -> None:
    """The desk database locked past its timeout: nothing is moved, nothing removed."""
    desk = tmp_path / "desk.db"
    engine = make_engine(f"sqlite:///{desk}", lock_timeout_s=0.2)
    try:
        Base.metadata.create_all(engine)
        for i in range(3):
            spool_email(spool, blobs, email(f"Locked out {i}"), ENVELOPE, "smtp", now=NOW,
                        row_limit=ROW_LIMIT)
        holder = sqlite3.connect(desk, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(Exception, match="locked"):
                move_spooled(engine, spool, spool.oldest())
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert spool.count() == 3
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(RawMessage)) == 0
        assert len(move_spooled(engine, spool, spool.oldest())) == 3
    finally:
        engine.dispose()


def test_rows_already_moved_are_not_moved_again(
        desk_engine: Engine, spool: Spool, blobs: BlobStore) -> None:
    """The door's hand-over of an id the desk's sweep moved a moment before."""
    spooled = spool_email(spool, blobs, email("Swept first"), ENVELOPE, "smtp", now=NOW,
                          row_limit=ROW_LIMIT)
    assert len(move_spooled(desk_engine, spool, spool.oldest())) == 1
    assert spool.rows([spooled.spool_id]) == []
    assert move_spooled(desk_engine, spool, spool.rows([spooled.spool_id])) == []


def test_emails_spooled_from_many_threads_at_once_each_get_their_own_committed_row(
        tmp_path: Path, spool: Spool, blobs: BlobStore) -> None:
    """Four SMTP connections' accepts at once (committed in groups): every email is
    committed once, under its own id, and another process reads each back whole."""
    raws = {f"{t}-{i}": email(f"Thread {t} email {i}") for t in range(8) for i in range(25)}
    got: dict[str, int] = {}
    lock = threading.Lock()

    def sender(t: int) -> None:
        for i in range(25):
            key = f"{t}-{i}"
            spool_id = spool_email(spool, blobs, raws[key], ENVELOPE, "smtp", now=NOW,
                                   row_limit=ROW_LIMIT).spool_id
            with lock:
                got[key] = spool_id

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 200 and len(set(got.values())) == 200
    other = Spool.of_desk(tmp_path / "data")
    try:
        by_id = {row.id: row.content for row in other.oldest(1000)}
    finally:
        other.close()
    assert {key: by_id[spool_id] for key, spool_id in got.items()} == raws


def test_a_commit_that_fails_fails_every_email_it_carried(
        tmp_path: Path, spool: Spool, blobs: BlobStore) -> None:
    """Each waiting door thread hears the error (and answers 451): none is told 250."""
    with sqlite3.connect(tmp_path / "data" / SPOOL_FILE) as db:
        db.execute("DROP TABLE spooled_mail")
    errors: list[Exception] = []

    def sender() -> None:
        try:
            spool_email(spool, blobs, email("Cannot be spooled"), ENVELOPE, "smtp", now=NOW,
                        row_limit=ROW_LIMIT)
        except sqlite3.OperationalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4 and all("no such table" in str(e) for e in errors)


def test_a_spool_of_an_unknown_version_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / SPOOL_FILE
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(SpoolError, match=rf"{SPOOL_FILE}: a spool of version 99"):
        Spool(path)
