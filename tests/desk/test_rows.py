"""Rows written at once (``workflow.desk.rows``): each helper emits one statement and
leaves the session as a flush would, with nothing of the row left for the next flush."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from postdesk.storage.models import Outbox, SlaClock, Ticket
from postdesk.workflow.desk.rows import insert_all_now, insert_now, update_now
from postdesk.workflow.rules.clock import ManualClock


@pytest.fixture
def statements(session: Session) -> Iterator[list[str]]:
    seen: list[str] = []
    connection = session.connection()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()[:3]))

    event.listen(connection, "before_cursor_execute", record)
    yield seen
    event.remove(connection, "before_cursor_execute", record)


def clock_row(ticket: Ticket, target: str, clock: ManualClock) -> SlaClock:
    now = clock.now()
    return SlaClock(ticket_id=ticket.id, target=target, cycle=0, calendar="24x7",
                    target_days=0, target_seconds=3600, started_at=now,
                    paused_business_seconds=0, paused_since=None, due_at=now, risk_at=None,
                    stopped_at=None, at_risk_at=None, breached_at=None)


def outbox_row(key: str, clock: ManualClock) -> Outbox:
    return Outbox(dedupe_key=key, template="acknowledgement", recipient="a@client.example",
                  to=["a@client.example"], cc=[], subject="s", message_id=f"<{key}@x>",
                  automatic=True, status="draft", created_at=clock.now(), attempts=0)


def test_insert_now_writes_one_row_and_leaves_it_persistent_with_nothing_to_flush(
        session: Session, statements: list[str], clock: ManualClock) -> None:
    row = outbox_row("ack:1", clock)
    assert insert_now(session, row) is True
    assert statements == ["INSERT INTO outbox"]
    assert row.id is not None and sa_inspect(row).persistent
    assert not session.new and not session.dirty
    assert session.scalar(select(Outbox.subject).where(Outbox.id == row.id)) == "s"


def test_insert_now_unless_exists_writes_nothing_the_second_time(
        session: Session, clock: ManualClock) -> None:
    assert insert_now(session, outbox_row("ack:2", clock), unless_exists="dedupe_key")
    again = outbox_row("ack:2", clock)
    assert insert_now(session, again, unless_exists="dedupe_key") is False
    assert again.id is None and again not in session
    assert len(session.scalars(select(Outbox).where(Outbox.dedupe_key == "ack:2")).all()) == 1


def test_insert_all_now_writes_several_rows_each_with_its_own_id(
        session: Session, statements: list[str], new_ticket: Callable[..., Ticket],
        clock: ManualClock) -> None:
    ticket = new_ticket()
    statements.clear()
    clocks = [clock_row(ticket, target, clock) for target in ("first_response", "resolution")]
    insert_all_now(session, clocks)
    # SQLAlchemy's "insertmanyvalues": one statement on PostgreSQL; SQLite cannot return
    # the ids of a batch in order, so there it is one INSERT per row (as a flush does).
    assert statements == ["INSERT INTO sla_clocks"] * 2
    assert all(sa_inspect(c).persistent for c in clocks) and not session.new
    stored = dict(session.execute(select(SlaClock.id, SlaClock.target)
                                  .where(SlaClock.ticket_id == ticket.id)).all())
    assert stored == {clocks[0].id: "first_response", clocks[1].id: "resolution"}
    statements.clear()
    assert clocks[0].stopped_at is None and clocks[1].breached_at is None
    assert statements == []          # every column is known: nothing is loaded back


def test_update_now_writes_the_values_and_leaves_nothing_for_the_flush(
        session: Session, statements: list[str], new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    statements.clear()
    update_now(session, ticket, priority="P1", assignee_id=None)
    assert statements == ["UPDATE tickets SET"]
    assert ticket.priority == "P1" and not session.dirty
    session.flush()
    assert statements == ["UPDATE tickets SET"]      # the flush had nothing to write
    session.expire(ticket)
    assert ticket.priority == "P1"                    # read back from the database


def test_update_now_leaves_other_pending_changes_to_the_flush(
        session: Session, statements: list[str], new_ticket: Callable[..., Ticket]) -> None:
    ticket = new_ticket()
    ticket.subject = "Changed by the ORM"
    statements.clear()
    update_now(session, ticket, priority="P2")
    session.flush()
    assert statements == ["UPDATE tickets SET", "UPDATE tickets SET"]
    session.expire(ticket)
    assert (ticket.priority, ticket.subject) == ("P2", "Changed by the ORM")
