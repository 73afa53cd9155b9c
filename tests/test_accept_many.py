"""``accept_many`` (an import's accept): the rows of a batch in one INSERT, with the
outcomes of accepting each email on its own: a new email a new row, bytes accepted
before their row, bytes repeated in the batch once, and bytes another door accepted
between the batch's look-up and its INSERT that door's row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select

from postdesk.ingest.accept import Envelope, accept_many
from postdesk.storage.models import RawMessage
from tests.support import make_email

pytestmark = pytest.mark.backends("sqlite", "postgres-redis")

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_a_batch_is_accepted_in_one_insert_with_each_emails_own_outcome(
        make_desk: Any) -> None:
    desk = make_desk(smtp=False, workers=False)
    app = desk.app
    old, new, taken, again = (make_email(subject=f"Email {n}").as_bytes()
                              for n in ("old", "new", "taken", "again"))
    before = app.accept(old, Envelope(), "import:mbox", enqueue=False)
    doors: list[Any] = []

    def publish(put: Any, digests: Any) -> None:
        """Between the look-up and the INSERT: the blobs, and another door's accept."""
        for digest in digests:
            put(digest)
        doors.append(app.accept(taken, Envelope(), "smtp", enqueue=False))

    inserts: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO raw_messages"):
            inserts.append(statement)

    event.listen(app.engine, "before_cursor_execute", count)
    try:
        results = accept_many(app.sessions, app.services.blobs, [old, new, taken, new, again],
                              Envelope(), "import:mbox", now=NOW, row_limit=0,
                              publish=publish)
    finally:
        event.remove(app.engine, "before_cursor_execute", count)

    [door] = doors
    assert len(inserts) == 2   # the other door's, and the batch's one
    got = [(r.raw_id, r.created, r.status) if r else None for r in results]
    assert got[0] == (before.raw_id, False, "pending")           # accepted before
    assert got[1] is not None and got[1][1:] == (True, "pending")  # new
    assert got[2] == (door.raw_id, False, "pending")             # the other door's row
    assert got[3] is None                                        # repeated in the batch
    assert got[4] is not None and got[4][1:] == (True, "pending")
    assert len({got[1][0], got[4][0], door.raw_id, before.raw_id}) == 4
    with app.sessions() as session:
        assert session.scalar(select(func.count(RawMessage.id))) == 4
        stored = session.get(RawMessage, got[1][0])
        assert stored is not None and (stored.source, stored.status) == (
            "import:mbox", "pending")
        assert app.services.blobs.get(stored.sha256) == new
