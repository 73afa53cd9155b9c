"""The door's accept on PostgreSQL is one ``INSERT ... ON CONFLICT ... RETURNING`` in one
round trip: the statement commits on its own (autocommit), durably, before its answer
comes back, so no BEGIN and COMMIT travel with it. Counted at the wire with libpq's
trace of the connection accept used: one ReadyForQuery from the server per round trip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select

from postdesk.ingest.accept import Envelope
from postdesk.storage.models import RawMessage
from tests.support import make_email

pytestmark = pytest.mark.backends("postgres-redis")


@contextmanager
def wire_trace(engine: Any, path: Path) -> Iterator[list[str]]:
    """libpq's trace of every connection checked out of ``engine`` inside the block; the
    list it yields holds the trace's lines once the block ends."""
    lines: list[str] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def traced(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        dbapi_conn.pgconn.trace(fd)

    def untraced(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.pgconn.untrace()

    event.listen(engine, "checkout", traced)
    event.listen(engine, "checkin", untraced)
    try:
        yield lines
    finally:
        event.remove(engine, "checkout", traced)
        event.remove(engine, "checkin", untraced)
        os.close(fd)
        lines.extend(path.read_text().splitlines())


def round_trips(trace: list[str]) -> int:
    return sum(1 for line in trace if "\tB\t" in line and "\tReadyForQuery\t" in line)


def sent_queries(trace: list[str]) -> list[str]:
    """The simple-protocol statements the client sent (psycopg's BEGIN and COMMIT)."""
    return [line.split("\tQuery\t", 1)[1].strip() for line in trace
            if "\tF\t" in line and "\tQuery\t" in line]


def test_accepting_an_email_on_postgresql_is_one_round_trip_committed_before_it_returns(
        make_desk: Any, tmp_path: Path) -> None:
    app = make_desk(smtp=False, workers=False).app
    raw = make_email(subject="Printer on fire").as_bytes()
    with wire_trace(app.engine, tmp_path / "trace") as trace:
        result = app.accept(raw, Envelope(), "smtp", enqueue=False)

    assert result.created
    assert round_trips(trace) == 1
    assert sent_queries(trace) == []            # no BEGIN, no COMMIT
    # Committed: another connection, outside the desk's pool, sees the row.
    other = create_engine(app.engine.url)
    try:
        with other.connect() as conn:
            status = conn.scalar(select(RawMessage.status)
                                 .where(RawMessage.id == result.raw_id))
    finally:
        other.dispose()
    assert status == "pending"


def test_the_same_bytes_again_get_the_first_row_back_in_two_round_trips(
        make_desk: Any, tmp_path: Path) -> None:
    """A second delivery of the same bytes: the INSERT does nothing, and one look-up reads
    the row accepted first, each committing on its own."""
    app = make_desk(smtp=False, workers=False).app
    raw = make_email(subject="Printer on fire").as_bytes()
    first = app.accept(raw, Envelope(), "smtp", enqueue=False)
    with wire_trace(app.engine, tmp_path / "trace") as trace:
        again = app.accept(raw, Envelope(), "smtp", enqueue=False)

    assert (again.raw_id, again.created, again.status) == (first.raw_id, False, "pending")
    assert round_trips(trace) == 2
    assert sent_queries(trace) == []
