"""An email's stored attachments, and their form in an outbox draft: a reference to the
blob (never the bytes: a draft is a small JSON row), read back when the draft is
rendered (``desk.outbox``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.models import Attachment
from postdesk.workflow.rules.attachments import FileFacts


def message_attachments(session: Session, message_id: int) -> list[Attachment]:
    return list(session.scalars(select(Attachment).where(Attachment.message_id == message_id)
                                .order_by(Attachment.id)))


def facts(attachments: Sequence[Attachment]) -> list[FileFacts]:
    return [FileFacts(key=a.id, filename=a.filename, size=a.size, kept=a.sha256 is not None)
            for a in attachments]


def draft_file(attachment: Attachment) -> dict[str, Any]:
    """One attachment as an outbox draft keeps it (``OutboxWriter.queue(attachments=)``)."""
    assert attachment.sha256 is not None, "only stored files can be sent"
    return {"sha256": attachment.sha256, "filename": attachment.filename,
            "content_type": attachment.content_type, "content_id": attachment.content_id,
            "inline": attachment.inline}
