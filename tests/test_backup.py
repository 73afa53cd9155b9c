"""`postdesk backup` while mail arrives, `postdesk restore` into a fresh directory:
every ticket, message and attachment of the backup is there, and every email that was
answered 250 before the backup began becomes ticket content on the restored desk."""

from __future__ import annotations

import hashlib
import json
import smtplib
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from postdesk.backup import backup
from postdesk.cli import main
from postdesk.ingest.accept import Envelope
from postdesk.ingest.spooled import move_spooled, spool_email
from postdesk.scheduler import sweep_pending_raw
from postdesk.storage.blobs import BlobStore
from postdesk.storage.db import make_engine
from postdesk.storage.models import Attachment, Message, RawMessage, Ticket
from postdesk.storage.raw_store import raw_bytes
from postdesk.storage.spool import SPOOL_FILE, Spool
from postdesk.workflow.rules.config import load_config, parse_config
from tests.conftest import start_desk, stop_desk
from tests.support import backend, config_text, make_email, wait_for

BURST = 40


def attachment_for(n: int) -> bytes:
    return f"log file {n}\n".encode() * (200 + n)


def snapshot(database_url: str) -> dict[str, Any]:
    """Tickets, messages and attachments of a database, as comparable values."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            return {
                "tickets": sorted((t.id, t.subject, t.status, t.requester_email)
                                  for t in session.scalars(select(Ticket))),
                "messages": sorted((m.id, m.ticket_id, m.message_id, m.text)
                                   for m in session.scalars(select(Message))),
                "attachments": sorted((a.id, a.message_id, a.filename, a.size, a.sha256)
                                      for a in session.scalars(select(Attachment))),
                "raw": sorted((r.id, r.message_id or "", r.sha256)
                              for r in session.scalars(select(RawMessage))),
            }
    finally:
        engine.dispose()


def restore_into_fresh(tmp_path: Path, config_file: Path, database_url: str
                       ) -> tuple[Path, Path]:
    """``postdesk restore`` of ``tmp_path/backup`` into ``tmp_path/fresh`` (a new database
    and data_dir, the config otherwise the same); the directory and its config."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fresh_config = fresh / "postdesk.toml"
    fresh_config.write_text(config_file.read_text()
                            .replace(database_url, f"sqlite:///{fresh / 'postdesk.db'}")
                            .replace(str(tmp_path / "data"), str(fresh / "data")))
    assert main(["restore", str(tmp_path / "backup"), "--config", str(fresh_config)]) == 0
    return fresh, fresh_config


@pytest.mark.slow
def test_a_backup_taken_mid_burst_restores_every_ticket_message_and_attachment(
        tmp_path: Path) -> None:
    with backend("sqlite", tmp_path) as be:
        config_file = tmp_path / "postdesk.toml"
        config_file.write_text(config_text(be, tmp_path / "data"))
        desk = start_desk(load_config(config_file))
        answered: list[tuple[float, str]] = []   # (when 250 came back, Message-ID)
        try:
            def burst() -> None:
                for n in range(BURST):
                    msg = make_email(subject=f"Burst {n}", body=f"email number {n}")
                    msg.add_attachment(attachment_for(n), maintype="text", subtype="plain",
                                       filename=f"log-{n}.txt")
                    with smtplib.SMTP("127.0.0.1", desk.smtp_port, timeout=30) as smtp:
                        smtp.send_message(msg)
                    answered.append((time.monotonic(), msg["Message-ID"]))

            sender = threading.Thread(target=burst)
            sender.start()
            wait_for(lambda: len(answered) >= BURST // 3, 60, what="a third of the burst")
            started = time.monotonic()
            assert main(["backup", str(tmp_path / "backup"), "--config",
                         str(config_file)]) == 0
            sender.join(timeout=120)
            assert len(answered) == BURST
            assert len(answered) > len([t for t, _ in answered if t < started])  # mid-burst
            desk.wait_settled(60)
        finally:
            stop_desk(desk)
    before_backup = {mid for t, mid in answered if t < started}
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["database"] == {"kind": "sqlite", "file": "postdesk.db"}
    backed_up = snapshot(f"sqlite:///{tmp_path / 'backup' / 'postdesk.db'}")
    # (A raw message still pending has no Message-ID column yet: count them.)
    assert len(backed_up["raw"]) >= len(before_backup)

    # Restore into a fresh directory, with the restore command.
    fresh, fresh_config = restore_into_fresh(tmp_path, config_file, be.database_url)
    restored = snapshot(f"sqlite:///{fresh / 'postdesk.db'}")
    assert restored == backed_up
    blobs = BlobStore(fresh / "data" / "blobs")
    for _id, _message, filename, size, sha in restored["attachments"]:
        n = int(filename.removeprefix("log-").removesuffix(".txt"))
        assert blobs.get(sha) == attachment_for(n) and size == len(attachment_for(n))
    # Every raw email restored whole, from its row or its blob file.
    engine = create_engine(f"sqlite:///{fresh / 'postdesk.db'}")
    try:
        with Session(engine) as session:
            for raw in session.scalars(select(RawMessage)):
                assert hashlib.sha256(raw_bytes(session, blobs, raw)).hexdigest() == raw.sha256
    finally:
        engine.dispose()

    # The restored desk finishes what was pending at backup time: every email answered
    # 250 before the backup began is a message on a ticket, with its attachment.
    desk = start_desk(parse_config(fresh_config.read_text(), environ={}), smtp=False)
    try:
        # What the scheduler's sweeper does after sweep_grace: the jobs of the old
        # in-process queue did not survive, the rows did.
        sweep_pending_raw(desk.app.services, desk.app.dispatch, timedelta(0))

        def none_pending() -> bool:
            with desk.app.sessions() as session:
                return session.scalar(select(RawMessage.id).where(
                    RawMessage.status == "pending").limit(1)) is None
        wait_for(none_pending, 60, what="the restored desk to process what was pending")
        with desk.app.sessions() as session:
            on_tickets = {m.message_id: [a.filename for a in m.attachments]
                          for m in session.scalars(select(Message).where(
                              Message.direction == "in"))}
    finally:
        stop_desk(desk)
    for mid in before_backup:
        assert mid in on_tickets
        assert len(on_tickets[mid]) == 1


def test_backup_refuses_a_directory_that_is_not_empty_or_inside_data_dir(tmp_path: Path) -> None:
    with backend("sqlite", tmp_path) as be:
        config = parse_config(config_text(be, tmp_path / "data"), environ={})
        (tmp_path / "dest").mkdir()
        (tmp_path / "dest" / "something").write_text("x")
        from postdesk.workflow.rules.errors import UserError
        with pytest.raises(UserError, match="not empty"):
            backup(config, tmp_path / "dest")
        with pytest.raises(UserError, match="inside desk.data_dir"):
            backup(config, tmp_path / "data" / "backups" / "one")


def test_restore_refuses_to_overwrite_a_desk(tmp_path: Path, capsys) -> None:
    with backend("sqlite", tmp_path) as be:
        config_file = tmp_path / "postdesk.toml"
        config_file.write_text(config_text(be, tmp_path / "data"))
        desk = start_desk(load_config(config_file), smtp=False, workers=False)
        stop_desk(desk)
        assert main(["backup", str(tmp_path / "b"), "--config", str(config_file)]) == 0
        assert main(["restore", str(tmp_path / "b"), "--config", str(config_file)]) == 2
        assert "exists; restore only into a new place" in capsys.readouterr().err
        assert main(["restore", str(tmp_path / "nowhere"), "--config", str(config_file)]) == 2


@pytest.mark.services
def test_a_postgresql_desk_is_backed_up_with_pg_dump(tmp_path: Path) -> None:
    import shutil

    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    with backend("postgres-redis", tmp_path) as be:
        config = parse_config(config_text(be, tmp_path / "data"), environ={})
        desk = start_desk(config, smtp=False, workers=False)
        try:
            manifest = backup(config, tmp_path / "pgbackup")
        finally:
            stop_desk(desk)
    dump = tmp_path / "pgbackup" / "postgres.dump"
    assert manifest["database"]["kind"] == "postgresql"
    assert dump.read_bytes().startswith(b"PGDMP")   # pg_dump's custom format
    listing = __import__("subprocess").run(["pg_restore", "--list", str(dump)],
                                           capture_output=True, text=True, check=True).stdout
    assert "TABLE public tickets" in listing and "TABLE public duty_runs" in listing


def test_an_email_still_in_the_doors_spool_is_in_the_backup_and_moved_after_restore(
        tmp_path: Path) -> None:
    """serve's door answered 250 for it and the desk had not moved it into the database
    yet: the backup copies the spool (with SQLite's backup API, not as a file), so the
    restored desk has it to move."""
    with backend("sqlite", tmp_path) as be:
        config_file = tmp_path / "postdesk.toml"
        config_file.write_text(config_text(be, tmp_path / "data"))
        stop_desk(start_desk(load_config(config_file), smtp=False))   # database made
        raw = make_email(subject="Spooled at backup time").as_bytes()
        spool = Spool.of_desk(tmp_path / "data")
        try:
            spool_email(spool, BlobStore.of_desk(tmp_path / "data"), raw,
                        Envelope("alice@client.example", ("support@desk.example",)), "smtp",
                        now=datetime.now(UTC), row_limit=256 * 1024)
            assert main(["backup", str(tmp_path / "backup"), "--config",
                         str(config_file)]) == 0
        finally:
            spool.close()
    assert not (tmp_path / "backup" / "data" / f"{SPOOL_FILE}-wal").exists()
    fresh, _ = restore_into_fresh(tmp_path, config_file, be.database_url)
    restored = Spool.of_desk(fresh / "data")
    engine = make_engine(f"sqlite:///{fresh / 'postdesk.db'}")
    try:
        [moved] = move_spooled(engine, restored, restored.oldest())
        assert moved.result.created
        with Session(engine) as session:
            [row] = session.scalars(select(RawMessage))
            assert raw_bytes(session, BlobStore(fresh / "data" / "blobs"), row) == raw
    finally:
        restored.close()
        engine.dispose()
