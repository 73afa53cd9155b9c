"""The per-email path's look-ups: org and staff rows cached per process (and re-read
after the directory is synced), contacts created in one statement, SLA clocks seen
before they are written, events written as they happen or, in the pipeline's record
phase, together at its end."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from postdesk.storage.directory import (
    ensure_contact,
    known_contacts,
    org_by_id,
    org_by_slug,
    staff_by_email,
    staff_by_id,
    sync_from_config,
)
from postdesk.storage.models import Contact, Event, Message, Org, SlaClock, Ticket
from postdesk.workflow.desk.events import add_event, deferred_events, discard_deferred_events
from postdesk.workflow.desk.merge import merged_into
from postdesk.workflow.desk.rows import buffered_rows, insert_now
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.tickets import looked_up_together, stored_on
from postdesk.workflow.rules.clock import ManualClock
from postdesk.workflow.rules.config import Config

# --- orgs and staff --------------------------------------------------------------------

def test_orgs_and_staff_are_read_once_then_come_from_the_cache(
        session: Session, sessions: sessionmaker[Session], statements: list[str]) -> None:
    org = org_by_slug(session, "clientco")
    staff = staff_by_email(session, "DEV1@agency.example")
    assert org is not None and staff is not None
    statements.clear()
    with sessions() as other:
        again = org_by_slug(other, "clientco")
        by_id = org_by_id(other, org.id)
        member = staff_by_id(other, staff.id)
        assert staff_by_email(other, "dev1@agency.example") is member
        assert again is by_id and again is not org          # this session's own copy
        assert again is not None and (again.id, again.name, again.plan) == (
            org.id, org.name, org.plan)
        assert member is not None and member.email == "dev1@agency.example"
        assert other.get(Org, org.id) is again                # in its identity map
    assert statements == []


def test_a_cached_row_stays_in_the_session_it_was_merged_into(
        session: Session, sessions: sessionmaker[Session]) -> None:
    """A session holds its rows weakly; one that records many emails (an import's batch)
    keeps the cached org instead of merging it again for every email."""
    assert org_by_slug(session, "clientco") is not None     # cached
    with sessions() as other:
        merged = weakref.ref(org_by_slug(other, "clientco"))  # type: ignore[arg-type]
        gc.collect()
        assert merged() is not None
        assert org_by_slug(other, "clientco") is merged()


def test_a_change_to_a_sessions_copy_never_reaches_the_cache(
        session: Session, sessions: sessionmaker[Session]) -> None:
    assert org_by_slug(session, "clientco") is not None
    with sessions() as other:
        copy = org_by_slug(other, "clientco")
        assert copy is not None
        copy.name = "Scribbled"
    with sessions() as third:
        fresh = org_by_slug(third, "clientco")
        assert fresh is not None and fresh.name == "Client Co"


def test_the_cache_follows_a_sync_of_the_directory(
        session: Session, config: Config) -> None:
    org = org_by_slug(session, "clientco")
    assert org is not None and org.active
    renamed = config.model_copy(update={"orgs": [
        o.model_copy(update={"name": "Client Company"}) if o.slug == "clientco" else o
        for o in config.orgs]})
    sync_from_config(session, renamed)
    session.flush()
    again = org_by_slug(session, "clientco")
    assert again is not None and again.name == "Client Company"


def test_unknown_names_are_not_cached(session: Session, statements: list[str]) -> None:
    assert org_by_slug(session, "nosuch") is None
    assert org_by_slug(session, "nosuch") is None
    assert len(statements) == 2


# --- contacts --------------------------------------------------------------------------

def test_a_contact_is_created_once_in_one_statement_and_ensured_once_per_transaction(
        session: Session, statements: list[str]) -> None:
    org = org_by_slug(session, "clientco")
    assert org is not None
    statements.clear()
    ensure_contact(session, "new@client.example", org, "New Person")
    ensure_contact(session, "new@client.example", org, "Another Name")   # remembered
    assert len(statements) == 1 and "INSERT" in statements[0]
    rows = session.scalars(select(Contact).where(Contact.email == "new@client.example")).all()
    assert [(c.name, c.org_id, c.listed, c.can_approve, c.hard_bounces) for c in rows] == [
        ("New Person", org.id, False, False, 0)]


def test_contacts_looked_up_together_are_ensured_without_a_statement_and_new_ones_made(
        session: Session, statements: list[str]) -> None:
    org = org_by_slug(session, "clientco")
    assert org is not None
    ensure_contact(session, "known@client.example", org, "Known")
    session.commit()
    session.connection()      # a later transaction begins (an import's next batch)
    statements.clear()
    known_contacts(session, ["known@client.example", "first@client.example"])
    assert len(statements) == 1 and "SELECT" in statements[0]
    ensure_contact(session, "known@client.example", org, "Known")     # exists: nothing
    assert len(statements) == 1
    ensure_contact(session, "first@client.example", org, "First")     # made now
    assert len(statements) == 2 and "INSERT" in statements[1]
    assert session.scalars(select(Contact.name).where(Contact.email.in_(
        ["known@client.example", "first@client.example"])).order_by(Contact.name)).all() == [
        "First", "Known"]


def test_a_contact_ensured_in_a_transaction_rolled_back_is_ensured_again(
        session: Session) -> None:
    session.commit()   # the directory, so that the rollback below undoes only the contact
    org = org_by_slug(session, "clientco")
    assert org is not None
    ensure_contact(session, "gone@client.example", org, "Gone")
    session.rollback()
    ensure_contact(session, "gone@client.example", org, "Back")
    assert session.scalars(select(Contact.name).where(
        Contact.email == "gone@client.example")).all() == ["Back"]


def test_a_contact_ensured_in_a_rolled_back_savepoint_is_ensured_again(
        session: Session) -> None:
    org = org_by_slug(session, "clientco")
    assert org is not None
    savepoint = session.begin_nested()
    ensure_contact(session, "undone@client.example", org, "Undone")
    savepoint.rollback()
    ensure_contact(session, "undone@client.example", org, "Again")
    names = session.scalars(select(Contact.name).where(
        Contact.email == "undone@client.example")).all()
    assert names == ["Again"]


def test_a_listed_contact_is_left_as_configured(session: Session) -> None:
    org = org_by_slug(session, "clientco")
    assert org is not None
    ensure_contact(session, "ops@partner.example", org, "Someone Else")
    contact = session.scalar(select(Contact).where(Contact.email == "ops@partner.example"))
    assert contact is not None and (contact.name, contact.can_approve, contact.listed) == (
        "Ops", True, True)


# --- events ----------------------------------------------------------------------------

def test_events_are_written_at_once_and_go_with_a_rolled_back_savepoint(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock) -> None:
    ticket = new_ticket()
    add_event(session, ticket, "kept", clock.now(), "tester", n=1)
    savepoint = session.begin_nested()
    add_event(session, ticket, "undone", clock.now())
    savepoint.rollback()
    with session.no_autoflush:
        rows = session.scalars(select(Event).where(Event.ticket_id == ticket.id)
                               .order_by(Event.id)).all()
    assert [(e.kind, e.actor, e.data) for e in rows] == [("kept", "tester", {"n": 1})]


def _events(session: Session, ticket: Ticket) -> list[tuple[str, Any]]:
    with session.no_autoflush:
        return [(e.kind, e.data) for e in session.scalars(
            select(Event).where(Event.ticket_id == ticket.id).order_by(Event.id))]


def test_deferred_events_are_written_in_order_in_one_statement_when_the_block_ends(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock,
        statements: list[str]) -> None:
    ticket = new_ticket()
    statements.clear()
    with deferred_events(session):
        for n in range(4):
            add_event(session, ticket, "step", clock.now(), n=n)
        assert statements == []
    assert [s.split(" (")[0] for s in statements] == ["INSERT INTO events"]
    assert _events(session, ticket) == [("step", {"n": n}) for n in range(4)]


def test_discarded_deferred_events_are_never_written(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock) -> None:
    ticket = new_ticket()
    with deferred_events(session):
        add_event(session, ticket, "undone", clock.now())
        discard_deferred_events(session)
        add_event(session, ticket, "kept", clock.now())
    assert _events(session, ticket) == [("kept", {})]


def test_a_block_inside_another_leaves_its_events_to_the_outer_one_and_discards_only_its_own(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock,
        statements: list[str]) -> None:
    ticket = new_ticket()
    statements.clear()
    with deferred_events(session):
        with deferred_events(session):
            add_event(session, ticket, "first email", clock.now())
        with deferred_events(session):
            add_event(session, ticket, "second email, undone", clock.now())
            discard_deferred_events(session)
        with deferred_events(session):
            add_event(session, ticket, "third email", clock.now())
        assert statements == []
    assert [s.split(" (")[0] for s in statements] == ["INSERT INTO events"]
    assert _events(session, ticket) == [("first email", {}), ("third email", {})]


def test_a_block_that_fails_writes_none_of_its_events_and_the_next_write_is_immediate(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock) -> None:
    ticket = new_ticket()
    with pytest.raises(RuntimeError), deferred_events(session):
        add_event(session, ticket, "lost", clock.now())
        raise RuntimeError("handler failed")
    add_event(session, ticket, "after", clock.now())
    assert _events(session, ticket) == [("after", {})]


def test_a_merge_recorded_earlier_in_the_block_is_seen_by_a_later_step(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock) -> None:
    source, target = new_ticket(subject="one"), new_ticket(subject="two")
    with deferred_events(session):
        add_event(session, source, "merged_into", clock.now(), into=target.id)
        assert merged_into(session, source.id) == target.id


# --- SLA clocks ------------------------------------------------------------------------

def test_running_clocks_include_those_not_yet_written_and_exclude_those_stopped_here(
        session: Session, services: Services, new_ticket: Callable[..., Ticket],
        clock: ManualClock, statements: list[str]) -> None:
    ticket = new_ticket("clientco", priority="P1")
    keeper = services.clocks(session)
    keeper.start_ticket(ticket, clock.now())
    pending = [c for c in session.new if isinstance(c, SlaClock)]
    assert pending, "started clocks are written with the transaction, not one by one"
    running = keeper.running(ticket)
    assert running == pending
    assert keeper.running(ticket, "first_response") == [
        c for c in pending if c.target == "first_response"]

    session.flush()
    written = keeper.running(ticket)
    assert [c.id for c in written] == sorted(c.id for c in pending)
    written[0].stopped_at = clock.now()             # stopped here, not yet written
    assert keeper.running(ticket) == written[1:]
    assert session.scalar(select(func.count(SlaClock.id)).where(
        SlaClock.ticket_id == ticket.id, SlaClock.stopped_at.is_(None))) == len(written) - 1


def test_a_second_start_before_anything_is_written_is_the_next_cycle(
        session: Session, services: Services, new_ticket: Callable[..., Ticket],
        clock: ManualClock) -> None:
    ticket = new_ticket("clientco")
    keeper = services.clocks(session)
    keeper.start_ticket(ticket, clock.now())
    keeper.start_ticket(ticket, clock.now())
    session.flush()
    cycles = session.execute(select(SlaClock.target, SlaClock.cycle).where(
        SlaClock.ticket_id == ticket.id).order_by(SlaClock.id)).all()
    kinds = {target for target, _ in cycles}
    assert sorted(cycles) == sorted([(k, 0) for k in kinds] + [(k, 1) for k in kinds])


# --- inbound dedupe keys, looked up together --------------------------------------------

def test_keys_looked_up_together_answer_once_each_without_a_statement(
        session: Session, new_ticket: Callable[..., Ticket],
        add_message: Callable[..., Any], statements: list[str]) -> None:
    ticket = new_ticket()
    stored = add_message(ticket, "<stored@client.example>")
    statements.clear()
    with looked_up_together(session, [stored.dedupe_key, "in:<new@client.example>"]):
        assert len(statements) == 1                                  # the one look-up
        assert stored_on(session, "in:<new@client.example>") is None
        assert stored_on(session, stored.dedupe_key) == ticket.id     # asked the database
        assert len(statements) == 2
        # Asked again (a second email with the same Message-ID, after the first was
        # stored or not): the database answers.
        assert stored_on(session, "in:<new@client.example>") is None
        assert len(statements) == 3
    assert stored_on(session, "in:<new@client.example>") is None
    assert len(statements) == 4


def test_an_email_held_back_by_its_batch_is_found_stored_without_writing_it(
        session: Session, new_ticket: Callable[..., Ticket], clock: ManualClock,
        statements: list[str]) -> None:
    """A second copy of an email later in the same import batch finds the first while its
    row is still held back (``rows.buffered_rows``), with no statement."""
    ticket = new_ticket()
    key = "in:<twice@client.example>"
    with buffered_rows(session), looked_up_together(session, [key]):
        assert stored_on(session, key) is None                      # the first copy
        insert_now(session, Message(
            ticket_id=ticket.id, direction="in", kind="public", dedupe_key=key,
            message_id="<twice@client.example>", references=[], from_addr="a@client.example",
            to=[], cc=[], subject="s", text="", stripped_text="", created_at=clock.now()))
        statements.clear()
        assert stored_on(session, key) == ticket.id                 # the second copy
        assert statements == []
