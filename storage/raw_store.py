"""Where an accepted email's bytes are: in its ``raw_messages`` row when small (one
durable commit accepts it, no file), else in the blob store under its SHA-256.

One rule for every reader (the pipeline, release from quarantine, the blob check), so
none of them needs to know which of the two places a given email went to."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from postdesk.storage.blobs import BlobStore
from postdesk.storage.models import RawMessage


def in_row(size: int, limit: int) -> bool:
    """Whether an email of ``size`` bytes is kept in its row under ``limit``
    (``desk.raw_in_database_bytes``; 0 keeps every email as a file)."""
    return size <= limit


def raw_bytes(session: Session, blobs: BlobStore, raw: RawMessage) -> bytes:
    """The email exactly as received. Raises ``BlobMissing`` (a user error naming the
    path) when its bytes are a file that is gone. A row loaded with its content
    (``undefer(RawMessage.content)``) costs no second query."""
    if "content" in inspect(raw).unloaded:
        content = session.scalar(select(RawMessage.content).where(RawMessage.id == raw.id))
    else:
        content = raw.content
    return content if content is not None else blobs.get(raw.sha256)


def missing_file(session: Session, blobs: BlobStore, raw: RawMessage) -> Path | None:
    """The path of this email's blob when its bytes should be there and are not; None
    when they are readable (in the row, or the file exists)."""
    kept_in_row = session.scalar(
        select(RawMessage.content.is_not(None)).where(RawMessage.id == raw.id))
    if kept_in_row or blobs.exists(raw.sha256):
        return None
    return blobs.path_for(raw.sha256)
