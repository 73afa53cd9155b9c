"""Waiting on the client, over real SMTP with the scheduler's job run by hand on a
manual clock: one reminder to the requester after ``pending_remind_after`` business time,
resolved with a note after ``pending_close_after``; staff hear nothing; 0 turns it off."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email import policy

import pytest
from sqlalchemy import select

from postdesk.scheduler import Scheduler
from postdesk.storage.models import Event
from postdesk.workflow.desk import pending
from postdesk.workflow.rules.clock import ManualClock
from tests.support import make_email

pytestmark = pytest.mark.backends("sqlite", "postgres-redis")
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def pending_ticket(make_desk, **kw):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock, **kw)
    client = make_email(sender="alice@client.example", subject="Export fails",
                        body="The export fails.")
    desk.send(client)
    desk.wait_settled()
    note = desk.outbox(template="staff_notification")[-1]
    desk.send(make_email(sender="dev1@agency.example", subject=f"Re: {note['subject']}",
                         body="#status pending\nCould you send the export log?",
                         in_reply_to=note["message_id"]), mail_from="dev1@agency.example")
    desk.wait_settled()
    assert desk.ticket("PD-1")["status"] == "pending"
    return desk, clock, client


def run_job(desk):
    result = pending.run(desk.app.services, desk.app.dispatch)
    desk.wait_settled()
    return result


def events(desk, kind):
    with desk.app.sessions() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind)))


def body(desk, row):
    msg = email.message_from_bytes(desk.outbox_raw(row["id"]), policy=policy.default)
    return msg, msg.get_body(("plain",)).get_content()


def test_a_pending_ticket_gets_one_reminder_after_three_business_days(make_desk):
    desk, clock, client = pending_ticket(make_desk)
    clock.advance(timedelta(days=2, hours=23))          # Thursday 09:00: not yet
    assert run_job(desk).reminded == 0
    clock.advance(timedelta(hours=2))                   # Thursday 11:00: 3 business days
    before = len(desk.outbox())
    assert run_job(desk).reminded == 1
    assert run_job(desk).reminded == 0                  # once per pending period
    new = desk.outbox()[before:]
    assert [(r["template"], r["to"]) for r in new] == [
        ("pending_reminder", ["alice@client.example"])]   # staff hear nothing
    msg, text = body(desk, new[0])
    assert "waiting for your answer on PD-1" in text
    assert msg["In-Reply-To"] == client["Message-ID"]
    assert msg["Subject"] == "Re: [PD-1] Export fails"
    assert msg.get_body(("html",)) is not None
    assert len(events(desk, "pending_reminder_sent")) == 1
    assert desk.ticket("PD-1")["status"] == "pending"


def test_a_pending_ticket_is_resolved_with_a_note_after_ten_business_days(make_desk):
    desk, clock, _ = pending_ticket(make_desk)
    clock.advance(timedelta(days=14, hours=1))           # Mon 7 Dec 11:00: 10 business days
    result = run_job(desk)
    assert (result.resolved, result.reminded) == (1, 0)
    assert desk.ticket("PD-1")["status"] == "resolved"
    [note] = desk.outbox(template="pending_resolved")
    assert note["to"] == ["alice@client.example"]
    assert "we have marked it resolved" in body(desk, note)[1]
    assert desk.outbox(template="pending_reminder") == []
    assert len(events(desk, "pending_auto_resolved")) == 1
    assert run_job(desk).resolved == 0


def test_a_client_reply_ends_the_wait_and_a_new_pending_period_reminds_again(make_desk):
    desk, clock, client = pending_ticket(make_desk)
    clock.advance(timedelta(days=3, hours=1))
    run_job(desk)
    desk.send(make_email(sender="alice@client.example", subject="Re: [PD-1] Export fails",
                         body="Here is the log.", in_reply_to=client["Message-ID"]))
    desk.wait_settled()
    assert desk.ticket("PD-1")["status"] == "open"
    clock.advance(timedelta(days=10))
    assert run_job(desk).reminded == 0 and run_job(desk).resolved == 0


NO_WAIT_ORG = """
[plans.nowait]
calendar = "uk-office"
pending_remind_after = 0
pending_close_after = "0"

[[orgs]]
slug = "quietco"
name = "Quiet Co"
plan = "nowait"
domains = ["quiet.example"]
"""


def test_reminders_and_auto_resolve_are_off_when_set_to_zero(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock, extra=NO_WAIT_ORG)
    desk.send(make_email(sender="carol@quiet.example", subject="Question"))
    desk.wait_settled()
    note = desk.outbox(template="staff_notification")[-1]
    desk.send(make_email(sender="dev1@agency.example", subject=f"Re: {note['subject']}",
                         body="#status pending\nWhich page?", in_reply_to=note["message_id"]),
              mail_from="dev1@agency.example")
    desk.wait_settled()
    clock.advance(timedelta(days=60))
    result = run_job(desk)
    assert (result.reminded, result.resolved) == (0, 0)
    assert desk.ticket("PD-1")["status"] == "pending"
    assert desk.outbox(template="pending_reminder") == []


def test_the_scheduler_runs_the_pending_job(make_desk):
    desk, clock, _ = pending_ticket(make_desk)
    clock.advance(timedelta(days=3, hours=1))
    results = Scheduler(desk.app.services, desk.app.dispatch).run_once()
    assert results["pending_tickets"] == pending.PendingResult(reminded=1, resolved=0)
    desk.wait_settled()
    assert [r["to"] for r in desk.outbox(template="pending_reminder")] == [
        ["alice@client.example"]]
