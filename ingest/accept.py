"""The one door every email comes in by (SMTP, IMAP, import): ``accept`` writes the raw
bytes to the blob store and commits a ``raw_messages`` row before it returns, so the
caller may acknowledge the email (SMTP 250, IMAP move) only once it is durable.

Accepting the same bytes again returns the existing row: re-delivery after a lost
acknowledgement, an IMAP re-scan or a re-run import create nothing new."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from postdesk.storage.blobs import BlobStore, sha256_hex
from postdesk.storage.models import RawMessage


@dataclass(frozen=True)
class Envelope:
    mail_from: str | None = None
    rcpt_tos: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class AcceptResult:
    raw_id: int
    created: bool          # False: these exact bytes were accepted before
    status: str            # the raw message's status now (pending for a new one)


# The door as the adapters are handed it (``App.accept``: commit, then enqueue the job), so
# SMTP and IMAP ingest never reach for the pipeline or the App themselves.
AcceptFn = Callable[[bytes, Envelope, str], AcceptResult]


def accept(sessions: sessionmaker[Session], blobs: BlobStore, raw: bytes, envelope: Envelope,
           source: str, *, now: datetime, notify: bool = True) -> AcceptResult:
    digest = sha256_hex(raw)
    existing = _find(sessions, digest)
    if existing:
        return existing
    # Blob first: a row must never point at bytes that are not on disk. A blob without
    # a row (crash in between) is harmless and is reused by the retry.
    blobs.put(raw)
    try:
        with sessions() as session, session.begin():
            row = RawMessage(sha256=digest, size=len(raw), source=source[:100],
                             envelope_from=envelope.mail_from,
                             envelope_to=list(envelope.rcpt_tos), received_at=now,
                             status="pending", notify=notify)
            session.add(row)
            session.flush()
            return AcceptResult(raw_id=row.id, created=True, status="pending")
    except IntegrityError:
        # Another door committed the same bytes between our look-up and insert.
        found = _find(sessions, digest)
        if found is None:
            raise
        return found


def _find(sessions: sessionmaker[Session], digest: str) -> AcceptResult | None:
    with sessions() as session:
        row = session.execute(
            select(RawMessage.id, RawMessage.status).where(RawMessage.sha256 == digest)
        ).first()
    return AcceptResult(raw_id=row.id, created=False, status=row.status) if row else None
