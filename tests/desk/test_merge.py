"""desk.merge alone: which merges are refused, what a merge moves, and how later email
finds the kept ticket."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.storage.directory import staff_by_email
from postdesk.storage.models import Message, Outbox
from postdesk.workflow.desk import merge


def test_a_merge_is_refused_across_orgs_into_itself_into_a_closed_or_unknown_ticket(
        session: Session, new_ticket) -> None:
    source, same_org = new_ticket(), new_ticket()
    other_org = new_ticket(org="baseco", requester="carol@base.example")
    closed = new_ticket(status="closed")
    refuse = [merge.merge_refusal(session, "PD", source, None, n)[1]
              for n in (other_org.id, source.id, closed.id, 99999)]
    assert "another org" in refuse[0]
    assert "into itself" in refuse[1]
    assert "is closed" in refuse[2]
    assert refuse[3] == "there is no ticket PD-99999"
    assert merge.merge_refusal(session, "PD", source, "XY", same_org.id)[1] \
        == f"XY-{same_org.id} is not a ticket of this desk (PD-n)"
    assert merge.merge_refusal(session, "PD", source, "PD", same_org.id) == (same_org, None)


def test_a_merge_moves_messages_and_cc_closes_the_source_and_later_lookups_follow_it(
        session: Session, services, outbox, new_ticket, add_message, clock) -> None:
    source = new_ticket(requester="bob@client.example", cc=["ops@partner.example"],
                        priority="P2")
    target = new_ticket()
    add_message(source, "<b1@client.example>")
    add_message(target, "<a1@client.example>")
    staff = staff_by_email(session, "dev1@agency.example")
    merge.merge_tickets(session, services, outbox, source=source, target=target,
                        staff=staff, now=clock.now() + timedelta(minutes=5))
    session.flush()
    ids = session.scalars(select(Message.message_id).where(Message.ticket_id == target.id))
    assert sorted(ids) == ["<a1@client.example>", "<b1@client.example>"]
    assert source.status == "closed" and target.priority == "P2"
    assert target.cc == ["bob@client.example", "ops@partner.example"]
    assert merge.follow_merges(session, source) is target
    assert merge.follow_merges(session, target) is target
    [notice] = session.scalars(select(Outbox).where(Outbox.template == "ticket_merged"))
    assert notice.to == ["bob@client.example"] and notice.cc == ["ops@partner.example"]


def test_the_message_to_split_is_the_one_the_answered_notification_was_about(
        session: Session, new_ticket, add_message) -> None:
    ticket = new_ticket()
    first = add_message(ticket, "<1@client.example>")
    second = add_message(ticket, "<2@client.example>")
    first.stripped_text, second.stripped_text = "Checkout is broken.", "The VAT is wrong."
    session.flush()
    # No notification to go by: the quoted text decides.
    quoted = "Splitting this.\n\n> The VAT is wrong.\n"
    assert merge.message_to_split(session, ticket, None, quoted) is second
    assert merge.message_to_split(session, ticket, None, "nothing quoted") is None
    assert merge.split_refusal(session, ticket, second) is None
    lone = new_ticket()
    only = add_message(lone, "<3@client.example>")
    assert "only client message" in (merge.split_refusal(session, lone, only) or "")
