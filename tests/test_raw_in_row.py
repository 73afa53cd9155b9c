"""Small raw emails live in their ``raw_messages`` row (``desk.raw_in_database_bytes``):
accepting one is a single durable commit and writes no file; a larger one is a blob file,
as before. Either way the pipeline reads the exact bytes that were sent, and the door's
commit is the one transaction synced against a power cut on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import event, select, text

from postdesk.ingest.accept import Envelope, accept
from postdesk.storage.blobs import BlobStore
from postdesk.storage.db import DURABLE, make_engine, make_session_factory
from postdesk.storage.migrate import alembic_config, upgrade
from postdesk.storage.models import RawMessage
from postdesk.storage.raw_store import in_row, raw_bytes
from tests.support import backend, make_email

LIMIT = 4096
NOW = datetime(2026, 11, 30, 9, tzinfo=UTC)


def _stored(desk: Any) -> list[tuple[bytes | None, str]]:
    with desk.app.sessions() as session:
        return [(content, digest) for content, digest in session.execute(
            select(RawMessage.content, RawMessage.sha256).order_by(RawMessage.id))]


def test_an_email_up_to_the_limit_is_kept_in_its_row_and_no_file_is_written(
        make_desk: Any) -> None:
    desk = make_desk(desk_extra=f"raw_in_database_bytes = {LIMIT}")
    msg = make_email(subject="Checkout broken")
    desk.send(msg)
    desk.wait_settled()
    [(content, digest)] = _stored(desk)
    assert content is not None and len(content) <= LIMIT
    assert not desk.app.blobs.exists(digest)
    assert desk.tickets()[0]["subject"] == "Checkout broken"


def test_an_email_over_the_limit_is_a_blob_file_and_its_row_holds_no_bytes(
        make_desk: Any) -> None:
    desk = make_desk(desk_extra=f"raw_in_database_bytes = {LIMIT}")
    desk.send(make_email(subject="Long log attached", body="log line\n" * 1000))
    desk.wait_settled()
    [(content, digest)] = _stored(desk)
    assert content is None
    assert desk.app.blobs.exists(digest)
    assert desk.tickets()[0]["subject"] == "Long log attached"


def test_the_bytes_read_back_are_the_bytes_accepted_from_the_row_and_from_a_file(
        make_desk: Any) -> None:
    desk = make_desk(smtp=False, workers=False, desk_extra=f"raw_in_database_bytes = {LIMIT}")
    small = make_email(body="short").as_bytes()
    large = make_email(body="x" * (2 * LIMIT)).as_bytes()
    ids = [desk.app.accept(raw, Envelope(), "test", enqueue=False).raw_id
           for raw in (small, large)]
    with desk.app.sessions() as session:
        read = [raw_bytes(session, desk.app.blobs, session.get(RawMessage, raw_id))
                for raw_id in ids]
    assert read == [small, large]


def test_accepting_the_same_small_email_twice_returns_the_first_row(make_desk: Any) -> None:
    desk = make_desk(smtp=False, workers=False)
    raw = make_email().as_bytes()
    first = desk.app.accept(raw, Envelope(), "test", enqueue=False)
    again = desk.app.accept(raw, Envelope(), "test", enqueue=False)
    assert (first.created, again.created, again.raw_id) == (True, False, first.raw_id)
    assert len(_stored(desk)) == 1


def test_a_limit_of_zero_keeps_every_email_as_a_file() -> None:
    assert not in_row(1, 0) and in_row(0, 0)
    assert in_row(4096, 4096) and not in_row(4097, 4096)


def test_the_doors_commit_is_synced_on_sqlite_and_the_pipelines_are_not(
        tmp_path: Path) -> None:
    """synchronous=FULL for the door's transaction (its COMMIT syncs the WAL: the email
    survives a power cut once 250 is said); NORMAL for the rest, set back on the same
    pooled connection."""
    engine = make_engine(f"sqlite:///{tmp_path / 'desk.db'}", pool_size=1)
    # What sqlite3 itself runs (the BEGIN and the PRAGMA go to the driver directly,
    # past SQLAlchemy's cursor events).
    ran: list[str] = []
    event.listen(engine, "connect",
                 lambda dbapi_conn, _record: dbapi_conn.set_trace_callback(ran.append))
    try:
        upgrade(engine)
        ran.clear()
        accept(make_session_factory(engine), BlobStore(tmp_path / "blobs"),
               make_email().as_bytes(), Envelope(), "test", now=NOW, row_limit=LIMIT)
        door = [s for s in ran if s.startswith(("PRAGMA synchronous", "BEGIN", "INSERT",
                                                "COMMIT"))]
        assert door[:2] == ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE"]
        assert door[2].startswith("INSERT INTO raw_messages") and door[3] == "COMMIT"
        with engine.connect() as conn:
            with conn.begin():
                level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            conn.execution_options(**{DURABLE: True})
            with conn.begin():
                durable_level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        assert (level, durable_level) == (1, 2)     # NORMAL, FULL
    finally:
        engine.dispose()


def test_downgrading_below_the_row_kept_revision_refuses_while_rows_hold_mail(
        tmp_path: Path) -> None:
    with backend("sqlite", tmp_path) as be:
        engine = make_engine(be.database_url)
        try:
            upgrade(engine)
            accept(make_session_factory(engine), BlobStore(tmp_path / "blobs"),
                   make_email().as_bytes(), Envelope(), "test", now=NOW, row_limit=LIMIT)
            cfg = alembic_config(engine)
            with pytest.raises(RuntimeError, match="1 raw emails are kept only in"), \
                    engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, "0010")
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM raw_messages "
                                         "WHERE content IS NOT NULL")).scalar() == 1
        finally:
            engine.dispose()
