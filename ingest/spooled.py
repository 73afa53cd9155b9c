"""Accepting through the door's spool (``postdesk.storage.spool``): how ``postdesk serve``
answers ``250`` on an SQLite desk without waiting for the desk database's one write lock.

Two halves, in two processes:

- ``spool_email`` (the door process): the bytes made durable as ``accept`` makes them (a
  large email's blob published first), then one synced commit into the spool; the 250
  names the spool row (``spool-N``).
- ``move_spooled`` (the desk process): spooled rows become ``raw_messages`` rows in one
  durable transaction (``insert_raw``: bytes accepted before add nothing), and only then
  leave the spool. What it returns is what ``accept`` would have returned for each email,
  so the caller enqueues and counts exactly as for an email accepted directly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from postdesk.ingest.accept import AcceptResult, Envelope, insert_raw
from postdesk.storage.blobs import BlobStore, sha256_hex
from postdesk.storage.db import durable
from postdesk.storage.raw_store import in_row
from postdesk.storage.spool import Spool, SpooledMail


@dataclass(frozen=True)
class Spooled:
    spool_id: int

    @property
    def queued_as(self) -> str:
        return f"spool-{self.spool_id}"


@dataclass(frozen=True)
class Moved:
    """One spooled email, now a raw message."""

    spool_id: int
    source: str
    result: AcceptResult


def spool_email(spool: Spool, blobs: BlobStore, raw: bytes, envelope: Envelope, source: str,
                *, now: datetime, row_limit: int, notify: bool = True) -> Spooled:
    digest = sha256_hex(raw)
    content = raw if in_row(len(raw), row_limit) else None
    if content is None:
        blobs.put(raw, digest)   # durable before the row that names it, as in ``accept``
    return Spooled(spool.add(digest, len(raw), source, envelope.mail_from,
                             envelope.rcpt_tos, now, notify, content))


def move_spooled(engine: Engine, spool: Spool, rows: Sequence[SpooledMail]) -> list[Moved]:
    """Move ``rows`` (from ``Spool.rows`` or ``Spool.oldest``) into the desk database
    ``engine``; a failure leaves every one of them spooled, to be moved again."""
    if not rows:
        return []
    with durable(engine) as conn:
        moved = [Moved(row.id, row.source, insert_raw(conn, _raw_values(row)))
                 for row in rows]
    spool.remove(m.spool_id for m in moved)
    return moved


def _raw_values(row: SpooledMail) -> dict[str, Any]:
    return {"sha256": row.sha256, "size": row.size, "source": row.source,
            "envelope_from": row.envelope_from, "envelope_to": list(row.envelope_to),
            "received_at": row.received_at, "status": "pending", "notify": row.notify,
            "content": row.content}
