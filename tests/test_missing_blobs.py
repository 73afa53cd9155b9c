"""A row whose blob file is gone (a restore from an older backup, a file deleted by hand):
`quarantine release` refuses with a clear message, `tickets show` and `outbox show` still
work, processing quarantines it with the reason, and ``missing_blobs`` counts it for
`postdesk status`. These desks keep every raw email as a file (``raw_in_database_bytes =
0``): a small email kept in its row has no file to lose (the last test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from postdesk.cli import main
from postdesk.storage.blob_check import missing_blobs
from postdesk.storage.blobs import BlobMissing, BlobStore
from postdesk.storage.models import Attachment, RawMessage
from postdesk.workflow.pipeline.process import process_inbound
from postdesk.workflow.pipeline.quarantine import release
from tests.support import Backend, config_text, make_email

pytestmark = pytest.mark.backends("sqlite")
FILES_ONLY = "raw_in_database_bytes = 0"


@pytest.fixture
def sqlite_desk(make_desk: Any) -> Any:
    """A desk that keeps every raw email in the blob store, so its file can be lost."""
    return make_desk(desk_extra=FILES_ONLY)


def _config_file(desk: Any, tmp_path: Path) -> str:
    """The running desk's config as a file, for the CLI."""
    be = Backend("sqlite", desk.config.desk.database_url, "stub://",
                 desk.config.desk.queue_namespace)
    path = tmp_path / "postdesk.toml"
    path.write_text(config_text(be, Path(desk.config.desk.data_dir), desk_extra=FILES_ONLY))
    return str(path)


def _lose_blob(desk: Any, raw_id: int) -> Path:
    with desk.app.sessions() as session:
        digest = session.get(RawMessage, raw_id).sha256
    path = desk.app.services.blobs.path_for(digest)
    path.unlink()
    return path


def test_get_of_a_missing_blob_names_the_digest_and_path(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"hello")
    store.path_for(digest).unlink()
    with pytest.raises(BlobMissing, match=digest):
        store.get(digest)


def test_releasing_a_message_whose_blob_is_missing_says_so_without_a_traceback(
        sqlite_desk: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sqlite_desk.send(make_email(sender="stranger@elsewhere.example"))
    sqlite_desk.wait_settled()
    raw = sqlite_desk.raws()[0]
    assert raw["status"] == "quarantined"
    path = _lose_blob(sqlite_desk, raw["id"])
    config = _config_file(sqlite_desk, tmp_path)
    capsys.readouterr()
    code = main(["quarantine", "release", str(raw["id"]), "--config", config])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing from the blob store" in err and str(path) in err
    assert "Traceback" not in err
    assert sqlite_desk.raws()[0]["status"] == "quarantined"   # untouched


def test_tickets_show_and_outbox_show_work_when_the_raw_blob_is_missing(
        sqlite_desk: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sqlite_desk.send(make_email(subject="Checkout broken"))
    sqlite_desk.wait_settled()
    _lose_blob(sqlite_desk, sqlite_desk.raws()[0]["id"])
    config = _config_file(sqlite_desk, tmp_path)
    capsys.readouterr()
    assert main(["tickets", "show", "PD-1", "--config", config]) == 0
    assert "Checkout broken" in capsys.readouterr().out
    ack = sqlite_desk.acks()[0]["id"]
    assert main(["outbox", "show", str(ack), "--config", config]) == 0
    assert "Checkout broken" in capsys.readouterr().out


def test_processing_a_message_whose_blob_is_missing_quarantines_it_with_the_reason(
        make_desk: Any) -> None:
    desk = make_desk(workers=False, desk_extra=FILES_ONLY)
    desk.send(make_email())
    raw_id = desk.raws()[0]["id"]
    _lose_blob(desk, raw_id)
    process_inbound(desk.app.services, raw_id)
    raw = desk.raws()[0]
    assert raw["status"] == "quarantined" and raw["reason"] == "processing_error"
    with desk.app.sessions() as session:
        detail = session.scalar(select(RawMessage.detail).where(RawMessage.id == raw_id))
    assert "missing from the blob store" in detail


def test_missing_blobs_counts_raw_messages_and_attachments_whose_file_is_gone(
        sqlite_desk: Any) -> None:
    msg = make_email(subject="With a file")
    msg.add_attachment(b"%PDF-1.4 report", maintype="application", subtype="pdf",
                       filename="report.pdf")
    sqlite_desk.send(msg)
    sqlite_desk.send(make_email(subject="Second"))
    sqlite_desk.wait_settled()
    blobs = sqlite_desk.app.services.blobs
    with sqlite_desk.app.sessions() as session:
        assert missing_blobs(session, blobs).total == 0
        attachment = session.scalars(select(Attachment.sha256)).one()
    first = sqlite_desk.raws()[0]["id"]
    _lose_blob(sqlite_desk, first)
    blobs.path_for(attachment).unlink()
    with sqlite_desk.app.sessions() as session:
        found = missing_blobs(session, blobs)
    assert (found.raw_messages, found.attachments, found.raw_ids) == (1, 1, (first,))


def test_an_email_kept_in_its_row_has_no_file_to_miss_and_is_released_without_one(
        make_desk: Any, tmp_path: Path) -> None:
    desk = make_desk()   # the default: emails up to 256 KiB live in their row
    desk.send(make_email(sender="stranger@elsewhere.example"))
    desk.wait_settled()
    raw = desk.raws()[0]
    assert raw["status"] == "quarantined"
    blobs = desk.app.services.blobs
    assert not blobs.exists(raw["sha256"])
    with desk.app.sessions() as session:
        assert missing_blobs(session, blobs).total == 0
    release(desk.app.services, desk.app.dispatch, raw["id"], org="clientco")
    desk.wait_settled()
    assert desk.raws()[0]["status"] == "processed"
