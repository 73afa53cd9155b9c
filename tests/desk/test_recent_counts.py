"""The hour-long counts the limits use (``desk.recent``): inside ``remembered_counts`` a
key's window is read once and later rows counted in memory, giving what the database
would say at every step, also as the hour moves on; outside it, or for a window that
starts before the one first read, each count asks the database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postdesk.storage.directory import org_by_slug
from postdesk.storage.models import Outbox, OutboxStatus, Ticket
from postdesk.workflow.desk.outbox import OutboxWriter
from postdesk.workflow.desk.recent import (
    HOUR,
    automatic_sent_since,
    noted_ticket,
    remember_windows,
    remembered_counts,
    tickets_opened_since,
)
from postdesk.workflow.desk.rows import buffered_rows, insert_now, insert_values_now
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.clock import ManualClock

ALICE = "alice@client.example"


def tickets_in_database(session: Session, since: object) -> int:
    return session.scalar(select(func.count(Ticket.id)).where(
        Ticket.requester_email == ALICE, Ticket.created_at >= since)) or 0


def open_one(session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock
             ) -> Ticket:
    """A ticket written as ``open_ticket`` writes one: noted as it is."""
    ticket = new_ticket(requester=ALICE)
    noted_ticket(session, ALICE, ticket.created_at)
    return ticket


def test_a_remembered_window_counts_what_the_database_would_as_tickets_open_and_time_passes(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock,
        statements: list[str]) -> None:
    open_one(session, new_ticket, clock)                  # before the block: in the database
    clock.advance(timedelta(minutes=40))
    with remembered_counts(session):
        seen = []
        for _ in range(4):
            open_one(session, new_ticket, clock)
            since = clock.now() - HOUR
            statements.clear()
            seen.append(tickets_opened_since(session, ALICE, since))
            reads = len(statements)
            assert seen[-1] == tickets_in_database(session, since)
            if len(seen) > 1:
                assert reads == 0                         # counted in memory
            clock.advance(timedelta(minutes=15))          # the first ticket leaves the hour
    assert seen == [2, 3, 3, 4]


def test_a_window_starting_before_the_remembered_one_is_counted_in_the_database(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock,
        statements: list[str]) -> None:
    open_one(session, new_ticket, clock)
    clock.advance(timedelta(minutes=50))
    with remembered_counts(session):
        open_one(session, new_ticket, clock)
        assert tickets_opened_since(session, ALICE, clock.now() - HOUR) == 2
        statements.clear()
        # imported history: an email's own hour, before the window first read
        earlier = clock.now() - timedelta(minutes=30) - HOUR
        assert tickets_opened_since(session, ALICE, earlier) == 2
        assert len(statements) == 1


def test_outside_the_block_every_count_is_a_statement(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock,
        statements: list[str]) -> None:
    open_one(session, new_ticket, clock)
    statements.clear()
    assert tickets_opened_since(session, ALICE, clock.now() - HOUR) == 1
    assert tickets_opened_since(session, ALICE, clock.now() - HOUR) == 1
    assert len(statements) == 2


def automatic_in_database(session: Session, since: object, ticket_id: int) -> tuple[int, int]:
    rows = session.execute(select(Outbox.ticket_id).where(
        Outbox.automatic.is_(True), Outbox.created_at >= since,
        Outbox.status != OutboxStatus.SUPPRESSED, Outbox.recipient == ALICE)).all()
    return len(rows), sum(1 for (t,) in rows if t == ticket_id)


def test_automatic_mail_queued_in_the_block_is_counted_as_the_database_would(
        session: Session, services: Services, new_ticket: Callable[..., Ticket],
        clock: ManualClock, statements: list[str]) -> None:
    first, second = new_ticket(requester=ALICE), new_ticket(requester=ALICE)
    with remembered_counts(session):
        for n, ticket in enumerate([first, second, first, second]):
            writer = OutboxWriter(session, services, clock.now())
            since = clock.now() - HOUR
            statements.clear()
            counted = automatic_sent_since(session, ALICE, ticket.id, since)
            if n:
                assert statements == []                   # counted in memory
            assert counted == automatic_in_database(session, since, ticket.id)
            writer.queue(dedupe_key=f"ack-{n}", template="acknowledgement", to=[ALICE],
                         subject="Re: hello", context={}, ticket=ticket)
            clock.advance(timedelta(minutes=25))
    assert counted == (2, 1)   # the first two left the hour; one of those left is this one's


def test_a_first_count_includes_what_a_batch_holds_back_and_reads_without_writing_it(
        session: Session, clock: ManualClock, statements: list[str]) -> None:
    """In an import's batch (rows held back, ``rows.buffered_rows``) a ticket just opened
    and an acknowledgement queued are not in the database yet when the window is first
    read: they are counted all the same, and the read does not make them be written."""
    org = org_by_slug(session, "clientco")
    assert org is not None
    with buffered_rows(session):
        ticket = Ticket(org_id=org.id, requester_email=ALICE, subject="Held", status="new",
                        priority="P3", created_at=clock.now(), updated_at=clock.now(), cc=[])
        insert_now(session, ticket)
        insert_values_now(session, Outbox, {
            "dedupe_key": "held-ack", "ticket_id": ticket.id, "template": "acknowledgement",
            "recipient": ALICE, "to": [ALICE], "cc": [], "subject": "Re: held",
            "message_id": "<held@desk>", "automatic": True, "status": OutboxStatus.DRAFT,
            "created_at": clock.now(), "attempts": 0})
        with remembered_counts(session):
            statements.clear()
            since = clock.now() - HOUR
            assert tickets_opened_since(session, ALICE, since) == 1
            assert automatic_sent_since(session, ALICE, ticket.id, since) == (1, 1)
            assert not [s for s in statements if s.startswith("INSERT")]
        assert tickets_in_database(session, since) == 1   # a plain read writes them


def test_windows_read_together_answer_each_first_count_without_a_statement(
        session: Session, services: Services, new_ticket: Callable[..., Ticket],
        clock: ManualClock, statements: list[str]) -> None:
    """An import's batch reads the hour of every sender its helper parsed in two
    statements; each count after that is what the database would say, with none."""
    bob = "bob@client.example"
    ticket = open_one(session, new_ticket, clock)
    OutboxWriter(session, services, clock.now()).queue(
        dedupe_key="before", template="acknowledgement", to=[ALICE], subject="Re: hello",
        context={}, ticket=ticket)
    clock.advance(timedelta(minutes=10))
    with remembered_counts(session):
        statements.clear()
        remember_windows(session, [ALICE, bob], clock.now() - HOUR)
        assert len(statements) == 2
        counted = []
        for _ in range(2):
            clock.advance(timedelta(minutes=5))
            since = clock.now() - HOUR
            statements.clear()
            counted.append((tickets_opened_since(session, ALICE, since),
                            tickets_opened_since(session, bob, since),
                            automatic_sent_since(session, ALICE, ticket.id, since),
                            automatic_sent_since(session, bob, None, since)))
            assert statements == []                       # all in memory
            assert counted[-1][:2] == (tickets_in_database(session, since), sum(
                1 for t in session.scalars(select(Ticket.requester_email))
                if t == bob))
            later = new_ticket(requester=bob)
            noted_ticket(session, bob, later.created_at)
    assert counted == [(1, 0, (1, 1), (0, 0)), (1, 1, (1, 1), (0, 0))]
