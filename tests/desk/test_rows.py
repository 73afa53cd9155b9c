"""Rows written at once (``workflow.desk.rows``): each helper emits one statement and
leaves the session as a flush would, with nothing of the row left for the next flush."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from postdesk.storage.db import NEEDS_NO_BUFFERED_ROWS
from postdesk.storage.directory import org_by_slug
from postdesk.storage.models import Outbox, SlaClock, Ticket
from postdesk.workflow.desk.rows import (
    buffered_rows,
    buffered_values,
    insert_all_now,
    insert_now,
    insert_values_now,
    update_now,
)
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


# --- rows held back by an import's batch (``buffered_rows``, SQLite) ------------------------

def ticket_row(session: Session, clock: ManualClock, subject: str) -> Ticket:
    """A new ticket of clientco (the org from the directory's cache: no statement)."""
    org = org_by_slug(session, "clientco")
    assert org is not None
    return Ticket(org_id=org.id, requester_email="alice@client.example", subject=subject,
                  status="new", priority="P3", created_at=clock.now(),
                  updated_at=clock.now(), cc=[])


def outbox_values(key: str, clock: ManualClock, **values: Any) -> dict[str, Any]:
    """An outbox row's column values by attribute, as ``OutboxWriter.queue`` gives them."""
    row = outbox_row(key, clock)
    return {k: v for k, v in vars(row).items() if not k.startswith("_")} | values


def inserts(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith("INSERT")]


def test_rows_held_back_are_written_one_statement_per_table_when_the_block_ends(
        session: Session, statements: list[str], clock: ManualClock) -> None:
    with buffered_rows(session):
        tickets = [ticket_row(session, clock, f"Held {i}") for i in range(3)]
        for ticket in tickets:
            insert_now(session, ticket)
        insert_all_now(session, [clock_row(t, "first_response", clock) for t in tickets])
        outbox_ids = [insert_values_now(session, Outbox, outbox_values(
            f"held:{i}", clock, ticket_id=tickets[i].id)) for i in range(3)]
        assert inserts(statements) == []
        assert [t.id for t in tickets] == list(range(tickets[0].id, tickets[0].id + 3))
        assert len(buffered_values(session, Ticket)) == 3
    assert inserts(statements) == ["INSERT INTO tickets", "INSERT INTO outbox",
                                   "INSERT INTO sla_clocks"]
    assert buffered_values(session, Ticket) == ()
    assert session.scalars(select(Ticket.subject).where(
        Ticket.id.in_([t.id for t in tickets])).order_by(Ticket.id)).all() == [
        "Held 0", "Held 1", "Held 2"]
    assert session.scalars(select(Outbox.ticket_id).where(
        Outbox.id.in_(outbox_ids)).order_by(Outbox.id)).all() == [t.id for t in tickets]


def test_any_other_statement_finds_the_rows_held_back_written_before_it_runs(
        session: Session, statements: list[str], clock: ManualClock) -> None:
    with buffered_rows(session):
        ticket = ticket_row(session, clock, "Read back in the block")
        insert_now(session, ticket)
        statements.clear()
        found = session.scalar(select(Ticket.subject).where(Ticket.id == ticket.id))
        assert found == "Read back in the block"
        assert statements[:2] == ["INSERT INTO tickets", "SELECT tickets.subject FROM"]
        update_now(session, ticket, priority="P1")    # an UPDATE of a row written already
    session.expire(ticket)
    assert ticket.priority == "P1"


def test_a_statement_that_needs_none_of_them_runs_with_the_rows_still_held(
        session: Session, statements: list[str], clock: ManualClock) -> None:
    with buffered_rows(session):
        insert_now(session, ticket_row(session, clock, "Still held"))
        statements.clear()
        count = session.connection().execute(select(func.count(Ticket.id)).where(
            Ticket.subject == "Still held").execution_options(**{NEEDS_NO_BUFFERED_ROWS: True}))
        assert count.scalar() == 0 and inserts(statements) == []
    assert session.scalar(select(func.count(Ticket.id)).where(
        Ticket.subject == "Still held")) == 1


def test_a_child_held_before_its_parent_table_is_written_after_it(
        session: Session, statements: list[str], clock: ManualClock,
        new_ticket: Callable[..., Ticket]) -> None:
    """A reply's message first (to a ticket already written), then a new ticket and its
    message: the tickets are written first all the same (SQLite checks each statement's
    foreign keys)."""
    earlier = new_ticket()
    with buffered_rows(session):
        statements.clear()
        insert_values_now(session, Outbox, outbox_values("child:1", clock,
                                                         ticket_id=earlier.id))
        later = ticket_row(session, clock, "Opened after the reply")
        insert_now(session, later)
        insert_values_now(session, Outbox, outbox_values("child:2", clock,
                                                         ticket_id=later.id))
        assert inserts(statements) == []
    assert inserts(statements) == ["INSERT INTO tickets", "INSERT INTO outbox"]
    assert session.scalar(select(Outbox.ticket_id).where(
        Outbox.dedupe_key == "child:2")) == later.id


def test_held_ids_never_hand_out_a_deleted_tickets_number_again(
        session: Session, clock: ManualClock) -> None:
    gone = ticket_row(session, clock, "Deleted later")
    insert_now(session, gone)
    session.delete(gone)
    session.flush()
    with buffered_rows(session):
        ticket = ticket_row(session, clock, "After the deleted one")
        insert_now(session, ticket)
    assert ticket.id > gone.id


def test_a_key_held_back_is_not_queued_twice_in_the_block_even_once_written(
        session: Session, clock: ManualClock) -> None:
    with buffered_rows(session):
        first = outbox_values("once:1", clock)
        assert insert_values_now(session, Outbox, first, unless_exists="dedupe_key")
        assert insert_values_now(session, Outbox, dict(first),
                                 unless_exists="dedupe_key") is None
        session.scalar(select(func.count(Outbox.id)))     # the held row is written here
        assert insert_values_now(session, Outbox, dict(first),
                                 unless_exists="dedupe_key") is None
    assert session.scalar(select(func.count(Outbox.id)).where(
        Outbox.dedupe_key == "once:1")) == 1


def test_rows_held_by_a_block_that_fails_are_never_written(
        session: Session, statements: list[str], clock: ManualClock) -> None:
    with pytest.raises(RuntimeError), buffered_rows(session):
        insert_now(session, ticket_row(session, clock, "Never written"))
        raise RuntimeError("the batch fails")
    assert inserts(statements) == []
    assert buffered_values(session, Ticket) == ()
    assert session.scalar(select(func.count(Ticket.id)).where(
        Ticket.subject == "Never written")) == 0


def test_a_row_the_orm_writes_in_the_block_never_gets_an_id_handed_out_to_a_held_one(
        session: Session, clock: ManualClock) -> None:
    """A clock started on a reply is added to the session and flushed by the ORM (the
    database picks its id); a clock held back after it is given an id above it."""
    with buffered_rows(session):
        held_first = ticket_row(session, clock, "Held before")
        insert_now(session, held_first)
        by_orm = ticket_row(session, clock, "Written by the ORM")
        session.add(by_orm)
        session.flush()
        held_after = ticket_row(session, clock, "Held after")
        insert_now(session, held_after)
        assert len({held_first.id, by_orm.id, held_after.id}) == 3
    assert session.scalars(select(Ticket.subject).where(Ticket.id.in_(
        [held_first.id, by_orm.id, held_after.id])).order_by(Ticket.id)).all() == [
        "Held before", "Written by the ORM", "Held after"]
