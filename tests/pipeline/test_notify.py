"""Notify: from what was recorded, who hears about it (drafts queued in the same
transaction); and the runner's reactions to outcomes. The tests start on a Tuesday at
10:00 in week 0 of the rota (dev1 on duty; dev2 is the lead)."""

from __future__ import annotations

import dataclasses
from email import message_from_bytes, policy
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from postdesk.mail.render import Renderer
from postdesk.storage.models import Contact, Event, Outbox, OutboxStatus
from postdesk.workflow.desk.outbox import render_drafts
from postdesk.workflow.desk.services import Services
from postdesk.workflow.pipeline import notify
from postdesk.workflow.pipeline.builtin import CHECKS, NOTIFY
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Outcome, run_steps
from postdesk.workflow.rules.allowance import format_hours
from tests.pipeline.conftest import InboundBuilder
from tests.support import make_email


def drafts(session: Session, ctx: Inbound) -> list[Outbox]:
    session.flush()
    return [r for r in (session.get(Outbox, i) for i in ctx.outbox.queued_ids) if r]


def recorded(inbound: InboundBuilder, **kw: Any) -> Inbound:
    """A client email taken through checks and handlers: ready for the notify steps."""
    notify_flag = kw.pop("notify", True)
    return inbound(make_email(**kw), notify=notify_flag, through="sign_off")


def checked(inbound: InboundBuilder, mail: Any, **kw: Any) -> tuple[Inbound, Outcome]:
    """An email through the checks, which must end with an outcome."""
    ctx = inbound(mail, **kw)
    outcome = run_steps(CHECKS, ctx)
    assert outcome is not None
    return ctx, outcome


def dsn(recipient: str, original_message_id: str) -> bytes:
    return (
        "Return-Path: <>\r\n"
        "From: Mail Delivery System <MAILER-DAEMON@mx.client.example>\r\n"
        "To: support@desk.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-7@mx.client.example>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nCould not deliver.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.client.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: support@desk.example\r\nTo: {recipient}\r\n"
        f"Message-ID: {original_message_id}\r\n\r\n"
        "--B--\r\n").encode()


# --- acknowledge -------------------------------------------------------------------------

def test_acknowledge_queues_one_draft_for_a_new_ticket(
        inbound: InboundBuilder, session: Session) -> None:
    ctx = recorded(inbound, message_id="<n1@client.example>")
    ticket = ctx.ticket
    assert ticket is not None

    notify.acknowledge.run(ctx)
    notify.acknowledge.run(ctx)              # processed again: still one acknowledgement

    [ack] = drafts(session, ctx)
    assert ack.template == "acknowledgement"
    assert ack.to == ["alice@client.example"]
    assert ack.subject == f"[PD-{ticket.id}] Website contact form broken"
    assert ack.in_reply_to == "<n1@client.example>"
    assert ack.ticket_id == ticket.id
    assert ack.draft is not None
    assert ack.draft["context"]["first_response_due"] == "Tue 24 Nov 2026 15:00 GMT"


def test_the_acknowledgement_renders_in_the_clients_thread(
        inbound: InboundBuilder, session: Session, services: Services) -> None:
    ctx = recorded(inbound, message_id="<n1@client.example>")
    notify.acknowledge.run(ctx)
    assert render_drafts(services, ctx.outbox.queued_ids) == ctx.outbox.queued_ids
    [ack] = drafts(session, ctx)
    session.refresh(ack)
    assert ack.raw is not None
    msg = message_from_bytes(ack.raw, policy=policy.default)
    assert msg["In-Reply-To"] == "<n1@client.example>"
    body = msg.get_body(("plain",)).get_content()
    assert f"PD-{ctx.ticket.id}" in body and "15:00 GMT" in body  # type: ignore[union-attr]


def test_a_reply_to_a_ticket_is_not_acknowledged(
        inbound: InboundBuilder, session: Session) -> None:
    first = recorded(inbound, message_id="<n1@client.example>")
    reply = inbound(make_email(in_reply_to="<n1@client.example>"), through="sign_off")
    assert reply.ticket is not None and first.ticket is not None
    assert reply.ticket.id == first.ticket.id
    notify.acknowledge.run(reply)
    assert drafts(session, reply) == []


def test_imported_mail_is_not_acknowledged(inbound: InboundBuilder, session: Session) -> None:
    ctx = recorded(inbound, notify=False)
    assert ctx.created_ticket
    for s in NOTIFY:
        s.run(ctx)
    assert drafts(session, ctx) == []


# --- page_p1 -----------------------------------------------------------------------------

def test_a_new_p1_pages_the_person_on_rota_and_every_lead(
        inbound: InboundBuilder, session: Session, services: Services) -> None:
    ctx = recorded(inbound, body="CLIENTCO-URGENT checkout is failing")
    ticket = ctx.ticket
    assert ticket is not None and ctx.became_p1

    notify.page_p1.run(ctx)

    pages = drafts(session, ctx)
    assert sorted(p.recipient for p in pages) == ["dev1@agency.example", "dev2@agency.example"]
    assert {p.template for p in pages} == {"p1_page"}
    assert all(p.draft is not None and p.draft["on_ticket"] is False for p in pages)
    assert all(p.draft is not None and p.draft["reply_to"] == services.reply_address(ticket.id)
               for p in pages)
    paged = session.scalars(select(Event.data).where(Event.ticket_id == ticket.id,
                                                     Event.kind == "p1_paged")).all()
    assert sorted(d["to"] for d in paged) == ["dev1@agency.example", "dev2@agency.example"]


def test_a_ticket_that_is_not_p1_pages_nobody(inbound: InboundBuilder, session: Session) -> None:
    ctx = recorded(inbound)
    notify.page_p1.run(ctx)
    assert drafts(session, ctx) == []


# --- notify_staff ------------------------------------------------------------------------

def test_the_assignee_hears_about_a_new_ticket_with_a_signed_reply_to(
        inbound: InboundBuilder, session: Session, services: Services) -> None:
    ctx = recorded(inbound)
    ticket = ctx.ticket
    assert ticket is not None
    notify.notify_staff.run(ctx)
    [note] = drafts(session, ctx)
    assert note.template == "staff_notification"
    assert note.to == ["dev1@agency.example"]
    # One subject for every notification on the ticket, so Gmail keeps them one thread.
    assert note.subject == f"[PD-{ticket.id}] Website contact form broken"
    assert note.draft["context"]["what"] == "New ticket"
    assert note.draft is not None
    assert note.draft["reply_to"] == services.reply_address(ticket.id)
    assert note.draft["on_ticket"] is False


def test_the_assignee_hears_about_a_client_reply(
        inbound: InboundBuilder, session: Session) -> None:
    recorded(inbound, message_id="<n1@client.example>")
    reply = inbound(make_email(in_reply_to="<n1@client.example>", body="Any news?"),
                    through="sign_off")
    notify.notify_staff.run(reply)
    [note] = drafts(session, reply)
    assert note.subject == f"[PD-{reply.ticket.id}] Website contact form broken"  # type: ignore[union-attr]
    assert note.draft is not None and note.draft["context"]["what"] == "Client reply"


def test_staff_hear_nothing_of_an_out_of_office_reply(
        inbound: InboundBuilder, session: Session) -> None:
    recorded(inbound, message_id="<n1@client.example>")
    auto = inbound(make_email(in_reply_to="<n1@client.example>",
                              headers={"Auto-Submitted": "auto-replied"}), through="sign_off")
    notify.notify_staff.run(auto)
    assert drafts(session, auto) == []


def test_every_email_about_a_new_p1_renders(
        inbound: InboundBuilder, session: Session, services: Services) -> None:
    """The data each notify step stores in its draft is what its template needs."""
    ctx = recorded(inbound, body="CLIENTCO-URGENT checkout is failing")
    for s in NOTIFY:
        s.run(ctx)
    ids = ctx.outbox.queued_ids
    assert sorted(r.template for r in drafts(session, ctx)) == [
        "acknowledgement", "p1_page", "p1_page", "staff_notification"]
    assert render_drafts(services, ids) == ids
    session.expire_all()
    assert {session.get(Outbox, i).status for i in ids} == {  # type: ignore[union-attr]
        OutboxStatus.QUEUED}


# --- answer_signoff_refusal --------------------------------------------------------------

def test_someone_who_may_not_sign_off_is_told_who_can(
        inbound: InboundBuilder, session: Session, services: Services) -> None:
    first = recorded(inbound, message_id="<n1@client.example>")
    assert first.ticket is not None
    first.ticket.status = "awaiting_signoff"
    ctx = inbound(make_email(sender="carol@client.example", body="Approved",
                             in_reply_to="<n1@client.example>"), through="sign_off")
    assert ctx.signoff_refused

    notify.answer_signoff_refusal.run(ctx)

    [answer] = drafts(session, ctx)
    assert (answer.template, answer.to) == ("signoff_not_approver", ["carol@client.example"])
    assert answer.draft is not None
    assert answer.draft["context"]["approvers"] == ["ops@partner.example"]
    assert render_drafts(services, [answer.id]) == [answer.id]


# --- reactions to outcomes ---------------------------------------------------------------

def test_an_unknown_sender_gets_one_notice_a_day(
        inbound: InboundBuilder, session: Session) -> None:
    first, outcome = checked(inbound, make_email(sender="Mallory@Elsewhere.example"))
    assert outcome.reason == "unknown_sender"
    notify.notice_unknown_sender(first, outcome)
    again, outcome = checked(inbound, make_email(sender="mallory@elsewhere.example"))
    notify.notice_unknown_sender(again, outcome)

    [notice] = drafts(session, first)
    assert (notice.template, notice.to) == ("unknown_sender", ["mallory@elsewhere.example"])
    assert notice.ticket_id is None
    assert drafts(session, again) == []


def test_an_imported_email_from_an_unknown_sender_gets_no_notice(
        inbound: InboundBuilder, session: Session) -> None:
    ctx, outcome = checked(inbound, make_email(sender="mallory@elsewhere.example"),
                           notify=False)
    notify.notice_unknown_sender(ctx, outcome)
    assert drafts(session, ctx) == []


def test_a_bounce_marks_our_email_counts_the_contact_and_tells_the_assignee(
        inbound: InboundBuilder, session: Session) -> None:
    sent = recorded(inbound)
    notify.acknowledge.run(sent)
    [ack] = drafts(session, sent)
    ticket = sent.ticket
    assert ticket is not None

    ctx, outcome = checked(inbound, dsn("alice@client.example", ack.message_id),
                           envelope_from="")
    assert outcome.reason == "bounce"
    notify.bounce_bookkeeping(ctx, outcome)

    session.refresh(ack)
    assert ack.status == OutboxStatus.BOUNCED
    assert ack.bounced_address == "alice@client.example"
    contact = session.scalar(select(Contact).where(Contact.email == "alice@client.example"))
    assert contact is not None and contact.hard_bounces == 1
    assert ctx.raw.ticket_id == ticket.id
    [notice] = drafts(session, ctx)
    assert (notice.template, notice.to) == ("bounce_notice", ["dev1@agency.example"])


def test_a_bounce_of_nothing_we_sent_changes_nothing(
        inbound: InboundBuilder, session: Session) -> None:
    ctx, outcome = checked(inbound, dsn("nobody@client.example", "<not-ours@x.example>"),
                           envelope_from="")
    notify.bounce_bookkeeping(ctx, outcome)
    assert ctx.raw.ticket_id is None
    assert drafts(session, ctx) == []


def test_a_balance_request_is_answered_with_this_months_balance(
        inbound: InboundBuilder, session: Session, services: Services) -> None:
    ctx, outcome = checked(inbound, make_email(sender="bob@base.example", subject="balance"))
    assert (outcome.reason, outcome.data) == ("balance_request", "answer")

    notify.answer_balance(ctx, outcome)

    [answer] = drafts(session, ctx)
    assert (answer.template, answer.to) == ("balance", ["bob@base.example"])
    assert answer.ticket_id is None
    assert answer.draft is not None
    balance = answer.draft["context"]["balance"]["__object__"]
    assert (balance["year"], balance["month"]) == (2026, 11)
    assert balance["allowance"] == {"__timedelta__": 7200.0}
    # Rendered by a renderer with the ``hours`` helper the balance template calls.
    with_hours = dataclasses.replace(
        services, renderer=Renderer(None, template_globals={"hours": format_hours}))
    assert render_drafts(with_hours, [answer.id]) == [answer.id]
    session.refresh(answer)
    assert answer.raw is not None and b"2h 00m" in answer.raw


def test_a_duplicate_is_linked_to_the_ticket_it_is_already_on(
        inbound: InboundBuilder, session: Session) -> None:
    first = recorded(inbound, message_id="<n1@client.example>")
    ctx, outcome = checked(inbound, make_email(message_id="<n1@client.example>",
                                               headers={"X-Door": "imap"}))
    assert outcome.status == "duplicate"
    notify.note_duplicate(ctx, outcome)
    assert first.ticket is not None and ctx.raw.ticket_id == first.ticket.id

