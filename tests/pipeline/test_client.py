"""The record phase for a client's email: open a ticket or add the email to it, then
priority, assignment, SLA clocks and sign-off. The tests start on a Tuesday at 10:00 in
week 0 of the rota (dev1 on duty)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from postdesk.storage.models import (
    Contact,
    Event,
    Message,
    Outbox,
    RawMessage,
    SlaClock,
    Staff,
    Ticket,
)
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.sla_clocks import set_status
from postdesk.workflow.pipeline import client
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.process import process_inbound
from postdesk.workflow.pipeline.runner import Outcome, Quarantine
from postdesk.workflow.rules.clock import ManualClock
from tests.pipeline.conftest import InboundBuilder
from tests.support import make_email


def outcome_of(step: Any, ctx: Inbound) -> Outcome:
    with pytest.raises(Outcome) as raised:
        step.run(ctx)
    return raised.value


def event_kinds(session: Session, ticket: Ticket) -> list[str]:
    session.flush()
    return list(session.scalars(select(Event.kind).where(Event.ticket_id == ticket.id)
                                .order_by(Event.id)))


def opened(inbound: InboundBuilder, **mail: Any) -> Ticket:
    """A ticket opened by a client email taken through every handler."""
    ctx = inbound(make_email(**mail), through="sign_off")
    assert ctx.ticket is not None and ctx.created_ticket
    return ctx.ticket


def reply_to(ticket: Ticket, session: Session, **mail: Any) -> Any:
    first = session.scalar(select(Message.message_id).where(Message.ticket_id == ticket.id)
                           .order_by(Message.id).limit(1))
    return make_email(in_reply_to=first, subject=f"Re: [PD-{ticket.id}] {ticket.subject}",
                      **mail)


# --- record ------------------------------------------------------------------------------

def test_record_opens_a_ticket_for_a_new_client_email(
        inbound: InboundBuilder, session: Session, clock: ManualClock) -> None:
    ctx = inbound(make_email(sender="Carol <carol@client.example>",
                             subject="Fwd: Re: Checkout page slow",
                             message_id="<c1@client.example>",
                             body="It takes a minute.\n\nOn Monday Bob wrote:\n> old text\n"),
                  through="decide_trust")

    client.record.run(ctx)

    ticket = ctx.ticket
    assert ctx.created_ticket and ticket is not None
    assert ticket.subject == "Checkout page slow"
    assert ticket.requester_email == "carol@client.example"
    assert ticket.org.slug == "clientco"
    assert (ticket.status, ticket.priority) == ("new", "P3")
    assert ticket.created_at == clock.now()
    message = ctx.message
    assert message is not None and message.ticket_id == ticket.id
    assert (message.direction, message.kind, message.raw_id) == ("in", "public", ctx.raw.id)
    assert message.dedupe_key == "in:<c1@client.example>"
    assert "old text" not in message.stripped_text and "old text" in message.text
    assert event_kinds(session, ticket) == ["ticket_created", "message_received"]
    contact = session.scalar(select(Contact).where(Contact.email == "carol@client.example"))
    assert contact is not None and contact.org_id == ticket.org_id


def test_a_new_domain_contact_is_kept_with_the_name_from_their_email(
        inbound: InboundBuilder, session: Session) -> None:
    inbound(make_email(sender="Carol Jones <carol@client.example>"), through="record")
    contact = session.scalar(select(Contact).where(Contact.email == "carol@client.example"))
    assert contact is not None and contact.name == "Carol Jones"


def test_record_adds_a_client_reply_to_its_ticket(
        inbound: InboundBuilder, session: Session, clock: ManualClock) -> None:
    ticket = opened(inbound)
    clock.advance(timedelta(minutes=20))
    ctx = inbound(reply_to(ticket, session, body="More detail."), through="decide_trust")
    assert ctx.matched_by == "client_message_id"

    client.record.run(ctx)

    assert not ctx.created_ticket
    assert ctx.ticket is not None and ctx.ticket.id == ticket.id
    assert ticket.updated_at == clock.now()
    assert len(session.scalars(select(Message).where(Message.ticket_id == ticket.id)).all()) == 2


def test_record_quarantines_an_auto_reply_that_is_on_no_ticket(
        inbound: InboundBuilder, session: Session) -> None:
    ctx = inbound(make_email(subject="Out of office", headers={"Auto-Submitted": "auto-replied"}),
                  through="decide_trust")
    outcome = outcome_of(client.record, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "auto_reply"
    assert session.scalars(select(Ticket)).all() == []


def test_an_auto_reply_on_a_ticket_is_kept_as_a_system_message(
        inbound: InboundBuilder, session: Session) -> None:
    ticket = opened(inbound)
    ctx = inbound(reply_to(ticket, session, headers={"Auto-Submitted": "auto-replied"}),
                  through="record")
    assert ctx.message is not None and ctx.message.kind == "system"


def test_imported_history_keeps_its_own_date(inbound: InboundBuilder) -> None:
    sent = datetime(2025, 6, 2, 9, 15, tzinfo=UTC)
    ctx = inbound(make_email(date=sent), notify=False, through="record")
    assert ctx.ticket is not None and ctx.ticket.created_at == sent


# --- flood_limit -------------------------------------------------------------------------

def earlier_tickets(new_ticket: Any, clock: ManualClock, count: int,
                    requester: str = "alice@client.example", minutes_ago: int = 30) -> None:
    for _ in range(count):
        new_ticket("clientco", requester, created_at=clock.now() - timedelta(minutes=minutes_ago))


def test_the_new_ticket_one_over_the_hourly_limit_is_quarantined_as_flood(
        inbound: InboundBuilder, services: Services, new_ticket: Any,
        clock: ManualClock) -> None:
    limit = services.config.desk.flood_tickets_per_hour
    earlier_tickets(new_ticket, clock, limit - 1)
    last = inbound(make_email(sender="alice@client.example"), through="flood_limit")
    assert last.created_ticket                                   # the limit itself: fine

    ctx = inbound(make_email(sender="alice@client.example"), through="sign_off")
    assert ctx.created_ticket
    outcome = outcome_of(client.flood_limit, ctx)
    assert isinstance(outcome, Quarantine) and outcome.reason == "flood"
    assert f"alice@client.example opened {limit} tickets" in outcome.detail


def test_imported_mail_is_counted_against_the_hour_of_its_own_date(
        inbound: InboundBuilder, services: Services, clock: ManualClock) -> None:
    """History spread over days: one ticket a day from the same sender, imported in one
    go, never floods (the old rule counted the hour the import ran)."""
    limit = services.config.desk.flood_tickets_per_hour
    for day in range(limit + 5):
        sent = clock.now() - timedelta(days=120 - day)
        ctx = inbound(make_email(sender="alice@client.example", date=sent), notify=False,
                      through="flood_limit")
        assert ctx.created_ticket and ctx.ticket is not None
        assert ctx.ticket.created_at == sent.replace(microsecond=0)


def test_imported_mail_over_the_limit_within_its_own_hour_is_still_a_flood(
        inbound: InboundBuilder, services: Services, clock: ManualClock) -> None:
    limit = services.config.desk.flood_tickets_per_hour
    hour = clock.now() - timedelta(days=30)
    for i in range(limit):
        inbound(make_email(sender="alice@client.example", date=hour + timedelta(minutes=i)),
                notify=False, through="flood_limit")
    ctx = inbound(make_email(sender="alice@client.example",
                             date=hour + timedelta(minutes=limit)),
                  notify=False, through="sign_off")
    assert outcome_of(client.flood_limit, ctx).reason == "flood"


def test_a_reply_on_an_existing_ticket_never_counts_towards_the_flood_limit(
        inbound: InboundBuilder, session: Session, services: Services, new_ticket: Any,
        clock: ManualClock) -> None:
    limit = services.config.desk.flood_tickets_per_hour
    ticket = opened(inbound)
    earlier_tickets(new_ticket, clock, limit - 2)
    for i in range(3):                                            # replies: not counted
        inbound(reply_to(ticket, session, body=f"More detail {i}."), through="flood_limit")
    inbound(make_email(), through="flood_limit")                 # the limit-th ticket
    # At the limit, a reply still goes through; one more new ticket does not.
    reply = inbound(reply_to(ticket, session, body="Any news?"), through="flood_limit")
    assert not reply.created_ticket and reply.ticket is not None
    ctx = inbound(make_email(), through="sign_off")
    assert outcome_of(client.flood_limit, ctx).reason == "flood"


def test_the_flood_limit_is_per_sender(
        inbound: InboundBuilder, services: Services, new_ticket: Any,
        clock: ManualClock) -> None:
    earlier_tickets(new_ticket, clock, services.config.desk.flood_tickets_per_hour)
    ctx = inbound(make_email(sender="carol@client.example"), through="flood_limit")
    assert ctx.created_ticket


def test_tickets_older_than_an_hour_do_not_count_as_a_flood(
        inbound: InboundBuilder, services: Services, new_ticket: Any,
        clock: ManualClock) -> None:
    earlier_tickets(new_ticket, clock, services.config.desk.flood_tickets_per_hour,
                    minutes_ago=61)
    ctx = inbound(make_email(sender="alice@client.example"), through="flood_limit")
    assert ctx.created_ticket


def test_a_flood_quarantined_by_the_runner_leaves_only_its_raw_message(
        inbound: InboundBuilder, session: Session, services: Services, new_ticket: Any,
        clock: ManualClock) -> None:
    """The whole email as a worker processes it: what record and notify wrote for it
    (ticket, message, contact, acknowledgement, staff notification) is rolled back."""
    earlier_tickets(new_ticket, clock, services.config.desk.flood_tickets_per_hour,
                    requester="dave@client.example")
    tickets_before = session.scalar(select(func.count(Ticket.id)))
    ctx = inbound(make_email(sender="Dave <dave@client.example>"))
    session.commit()

    result = process_inbound(services, ctx.raw.id)

    assert result is not None
    assert (result.status, result.reason, result.ended_at) == ("quarantined", "flood",
                                                               "flood_limit")
    assert result.ticket_id is None and not result.created_ticket
    assert result.outbox_ids == ()
    session.expire_all()
    raw = session.get(RawMessage, ctx.raw.id)
    assert raw is not None and (raw.status, raw.reason) == ("quarantined", "flood")
    assert session.scalar(select(func.count(Ticket.id))) == tickets_before
    assert session.scalar(select(func.count(Message.id)).where(
        Message.raw_id == ctx.raw.id)) == 0
    assert session.scalar(select(Contact).where(Contact.email == "dave@client.example")) is None
    assert session.scalars(select(Outbox)).all() == []


# --- prioritise --------------------------------------------------------------------------

def test_the_orgs_escalation_keyword_makes_a_new_ticket_p1(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(body="CLIENTCO-URGENT the shop is broken"), through="record")
    client.prioritise.run(ctx)
    assert ctx.ticket is not None and ctx.ticket.priority == "P1"
    assert ctx.became_p1 and ctx.priority_reason == "escalation keyword"


def test_another_orgs_escalation_keyword_does_nothing(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(sender="bob@base.example", body="CLIENTCO-URGENT please"),
                  through="record")
    client.prioritise.run(ctx)
    assert ctx.ticket is not None and ctx.ticket.priority == "P3"
    assert not ctx.became_p1


def test_the_escalation_keyword_needs_a_verified_sender(inbound: InboundBuilder) -> None:
    ctx = inbound(make_email(body="CLIENTCO-URGENT"), through="decide_trust")
    ctx.sender_verified = False
    client.record.run(ctx)
    client.prioritise.run(ctx)
    assert ctx.ticket is not None and ctx.ticket.priority == "P3"
    assert not ctx.became_p1


def test_a_new_tickets_priority_and_assignee_are_written_with_it_not_updated_after(
        inbound: InboundBuilder, statements: list[str]) -> None:
    ctx = inbound(make_email(body="CLIENTCO-URGENT the shop is broken"),
                  through="decide_trust")
    statements.clear()
    for step in (client.record, client.prioritise, client.assign):
        step.run(ctx)
    ctx.session.flush()
    assert [s for s in statements if s.startswith("INSERT INTO tickets")]
    assert ctx.ticket is not None and ctx.ticket.priority == "P1"
    assert ctx.ticket.assignee_id is not None
    assert [s for s in statements if s.startswith("UPDATE tickets")] == []


def test_a_keyword_in_a_later_reply_raises_the_priority_and_recomputes_its_clocks(
        inbound: InboundBuilder, session: Session) -> None:
    ticket = opened(inbound, sender="bob@base.example")                      # Base P3: 10h
    ctx = inbound(reply_to(ticket, session, sender="bob@base.example",
                           body="Now I cannot log in at all."), through="record")
    client.prioritise.run(ctx)
    assert ticket.priority == "P2"
    assert not ctx.became_p1
    first = session.scalar(select(SlaClock).where(SlaClock.ticket_id == ticket.id,
                                                  SlaClock.target == "first_response"))
    assert first is not None
    assert first.due_at == datetime(2026, 11, 24, 18, 0, tzinfo=UTC)           # P2: 8h
    assert "priority_changed" in event_kinds(session, ticket)


def test_a_calm_reply_never_lowers_the_priority(
        inbound: InboundBuilder, session: Session) -> None:
    ticket = opened(inbound, body="The site is down!")
    assert ticket.priority == "P1"
    ctx = inbound(reply_to(ticket, session, body="Thanks, no rush."), through="record")
    client.prioritise.run(ctx)
    assert ticket.priority == "P1"
    assert not ctx.became_p1


# --- assign ------------------------------------------------------------------------------

def test_a_new_ticket_goes_to_the_staff_member_on_rota(
        inbound: InboundBuilder, session: Session, clock: ManualClock) -> None:
    ctx = inbound(make_email(), through="prioritise")
    client.assign.run(ctx)
    assert ctx.ticket is not None and ctx.ticket.assignee is not None
    assert ctx.ticket.assignee.email == "dev1@agency.example"

    clock.advance(timedelta(days=7))
    ctx = inbound(make_email(), through="prioritise")
    client.assign.run(ctx)
    assert ctx.ticket is not None and ctx.ticket.assignee is not None
    assert ctx.ticket.assignee.email == "dev2@agency.example"


def test_a_reply_does_not_reassign_its_ticket(
        inbound: InboundBuilder, session: Session, clock: ManualClock) -> None:
    ticket = opened(inbound)
    clock.advance(timedelta(days=7))                      # dev2's week
    inbound(reply_to(ticket, session), through="assign")
    assert session.get(Staff, ticket.assignee_id).email == "dev1@agency.example"  # type: ignore[union-attr]


# --- start_or_resume_clocks --------------------------------------------------------------

def test_a_new_ticket_starts_its_clocks_from_when_it_was_opened(
        inbound: InboundBuilder, session: Session, clock: ManualClock) -> None:
    ctx = inbound(make_email(), through="assign")
    client.start_or_resume_clocks.run(ctx)
    assert ctx.ticket is not None
    keeper = ctx.services.clocks(session)
    [first] = keeper.running(ctx.ticket)
    assert first.target == "first_response" and first.started_at == clock.now()


def test_a_client_reply_to_a_pending_ticket_reopens_it_and_resumes_the_clocks(
        inbound: InboundBuilder, session: Session, services: Services,
        clock: ManualClock) -> None:
    ticket = opened(inbound)
    set_status(services.clocks(session), ticket, "pending", clock.now(), "dev1@agency.example")
    clock.advance(timedelta(hours=1))
    inbound(reply_to(ticket, session), through="start_or_resume_clocks")
    assert ticket.status == "open"
    [first] = services.clocks(session).running(ticket)
    assert first.paused_since is None and first.paused_business_seconds == 3600


def test_an_out_of_office_reply_leaves_a_pending_ticket_pending(
        inbound: InboundBuilder, session: Session, services: Services,
        clock: ManualClock) -> None:
    ticket = opened(inbound)
    set_status(services.clocks(session), ticket, "pending", clock.now(), "dev1@agency.example")
    inbound(reply_to(ticket, session, headers={"Auto-Submitted": "auto-replied"}),
            through="start_or_resume_clocks")
    assert ticket.status == "pending"


def test_a_reply_to_a_resolved_ticket_reopens_it(
        inbound: InboundBuilder, session: Session, services: Services,
        clock: ManualClock) -> None:
    ticket = opened(inbound)
    set_status(services.clocks(session), ticket, "resolved", clock.now(), "dev1@agency.example")
    inbound(reply_to(ticket, session, body="It broke again."), through="start_or_resume_clocks")
    assert ticket.status == "open" and ticket.resolved_at is None


# --- sign_off ----------------------------------------------------------------------------

def awaiting_signoff(inbound: InboundBuilder) -> Ticket:
    ticket = opened(inbound)
    ticket.status = "awaiting_signoff"
    return ticket


def test_an_approver_signing_off_resolves_the_ticket(
        inbound: InboundBuilder, session: Session, clock: ManualClock) -> None:
    ticket = awaiting_signoff(inbound)
    ctx = inbound(reply_to(ticket, session, sender="ops@partner.example",
                           body="Approved, thanks!"), through="start_or_resume_clocks")
    client.sign_off.run(ctx)
    assert ticket.status == "resolved" and ticket.resolved_at == clock.now()
    assert not ctx.signoff_refused
    assert "signed_off" in event_kinds(session, ticket)


def test_someone_who_may_not_approve_is_refused_and_the_ticket_waits(
        inbound: InboundBuilder, session: Session) -> None:
    ticket = awaiting_signoff(inbound)
    ctx = inbound(reply_to(ticket, session, sender="carol@client.example", body="Approved"),
                  through="start_or_resume_clocks")
    client.sign_off.run(ctx)
    assert ticket.status == "awaiting_signoff"
    assert ctx.signoff_refused
    assert "signoff_refused" in event_kinds(session, ticket)


def test_not_approved_is_no_approval(inbound: InboundBuilder, session: Session) -> None:
    ticket = awaiting_signoff(inbound)
    ctx = inbound(reply_to(ticket, session, sender="ops@partner.example",
                           body="Sorry, this is not approved yet."),
                  through="start_or_resume_clocks")
    client.sign_off.run(ctx)
    assert ticket.status == "awaiting_signoff" and not ctx.signoff_refused
