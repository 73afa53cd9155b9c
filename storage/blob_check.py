"""Which rows name a blob whose file is missing — for ``postdesk status``.

Raw emails kept in their row (``desk.raw_in_database_bytes``) have no file and are not
checked. Cost: one ``stat`` per raw message kept as a file and per kept attachment, with
rows streamed from the database in batches (no row objects kept), so memory stays flat; on
a local disk that is roughly a second per few hundred thousand rows. ``since`` limits the
check to rows received after an instant (e.g. the last backup restore) when that is too
slow."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.blobs import BlobStore
from postdesk.storage.models import Attachment, Message, RawMessage

BATCH = 2000


@dataclass(frozen=True)
class MissingBlobs:
    raw_messages: int          # raw_messages rows whose bytes are gone
    attachments: int           # kept attachments whose bytes are gone
    raw_ids: tuple[int, ...]   # the first few, for the operator to look at

    @property
    def total(self) -> int:
        return self.raw_messages + self.attachments


def missing_blobs(session: Session, blobs: BlobStore, *, since: datetime | None = None,
                  show: int = 10) -> MissingBlobs:
    raw_query = select(RawMessage.id, RawMessage.sha256).where(RawMessage.content.is_(None))
    att_query = select(Attachment.sha256).where(Attachment.sha256.is_not(None))
    if since is not None:
        raw_query = raw_query.where(RawMessage.received_at >= since)
        att_query = (att_query.join(Message, Attachment.message_id == Message.id)
                     .join(RawMessage, Message.raw_id == RawMessage.id)
                     .where(RawMessage.received_at >= since))
    missing_raw: list[int] = []
    raw_count = 0
    for raw_id, digest in session.execute(raw_query.execution_options(yield_per=BATCH)):
        if not _exists(blobs, digest):
            raw_count += 1
            if len(missing_raw) < show:
                missing_raw.append(raw_id)
    att_count = 0
    for (kept,) in session.execute(att_query.execution_options(yield_per=BATCH)):
        if kept is not None and not _exists(blobs, kept):
            att_count += 1
    return MissingBlobs(raw_count, att_count, tuple(missing_raw))


def _exists(blobs: BlobStore, digest: str) -> bool:
    try:
        os.stat(blobs.path_for(digest))
    except FileNotFoundError:
        return False
    return True
