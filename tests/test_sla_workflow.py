"""SLA workflow over real SMTP with a hand-driven clock: escalation keyword -> P1 and the
P1 page; pending pauses the clock by exactly the paused business time; priority raised
by a later client email; at-risk and breach alerted exactly once, with two schedulers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from postdesk.storage.models import Event, Outbox
from postdesk.workflow.desk import breaches
from postdesk.workflow.rules.clock import ManualClock
from tests.support import BASECO, make_email

MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)   # GMT: UTC == London


# Broker-independent behaviour: SQLite+Stub and PostgreSQL+Redis are enough here;
# the foundation tests cover RabbitMQ end to end.
pytestmark = pytest.mark.backends("sqlite", "postgres-redis")


def staff_reply(desk, to_email: dict, body: str, sender: str = "dev1@agency.example"):
    """A staff member answering a postdesk email from their mail client."""
    msg = make_email(sender=sender, subject=f"Re: {to_email['subject']}", body=body,
                     in_reply_to=to_email["message_id"], references=to_email["message_id"])
    desk.send(msg, mail_from=sender)
    return msg


def test_escalation_keyword_makes_p1_and_pages_rota_and_leads(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock)
    desk.send(make_email(subject="CLIENTCO-URGENT checkout broken", body="Nobody can pay."))
    desk.wait_settled()
    [ticket] = desk.tickets()
    assert ticket["priority"] == "P1"
    assert ticket["assignee"] == "dev1@agency.example"        # rota week 0
    assert ticket["first_response_due"] == "2026-11-23T11:00:00Z"   # Enterprise P1: 1h 24/7
    pages = desk.outbox(template="p1_page")
    assert sorted(p["to"][0] for p in pages) == ["dev1@agency.example", "dev2@agency.example"]
    [ack] = desk.acks()
    raw = desk.outbox_raw(ack["id"]).decode()
    assert "Priority: P1" in raw


def test_escalation_keyword_from_second_rota_week(make_desk):
    clock = ManualClock(MONDAY_10 + timedelta(days=7))
    desk = make_desk(clock=clock)
    desk.send(make_email(subject="Site down", body="CLIENTCO-URGENT"))
    desk.wait_settled()
    [ticket] = desk.tickets()
    assert ticket["priority"] == "P1"
    assert ticket["assignee"] == "dev2@agency.example"
    assert [p["to"] for p in desk.outbox(template="p1_page")] == [["dev2@agency.example"]]


def test_keyword_rule_raises_priority_on_later_email_never_lowers(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock, extra=BASECO)
    first = make_email(sender="bob@base.example", subject="Question about invoices")
    desk.send(first)
    desk.wait_settled()
    assert desk.tickets()[0]["priority"] == "P3"
    [ack] = desk.acks()
    clock.advance(timedelta(minutes=30))
    desk.send(make_email(sender="bob@base.example", subject=f"Re: {ack['subject']}",
                         body="Now I cannot log in at all.", in_reply_to=ack["message_id"]))
    desk.wait_settled()
    ticket = desk.tickets()[0]
    assert ticket["priority"] == "P2"
    # Base P2 first response 8h from the ticket's start: Mon 10:00 -> Mon 18:00.
    assert ticket["first_response_due"] == "2026-11-23T18:00:00Z"
    clock.advance(timedelta(minutes=30))
    desk.send(make_email(sender="bob@base.example", subject=f"Re: {ack['subject']}",
                         body="Just a question, nothing urgent.", in_reply_to=ack["message_id"]))
    desk.wait_settled()
    assert desk.tickets()[0]["priority"] == "P2"


def test_pending_moves_due_by_exactly_the_paused_business_time(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock, extra=BASECO)
    desk.send(make_email(sender="bob@base.example", subject="Report export fails"))
    desk.wait_settled()
    ticket = desk.tickets()[0]
    # Base P3 resolution has no target; first response 10h: Mon 10-18 (8h) + Tue 08-10.
    assert ticket["first_response_due"] == "2026-11-24T10:00:00Z"
    [note] = desk.outbox(template="staff_notification")

    clock.set(datetime(2026, 11, 23, 11, 0, tzinfo=UTC))
    staff_reply(desk, note, "#status pending\n")
    desk.wait_settled()
    assert desk.tickets()[0]["status"] == "pending"

    clock.set(datetime(2026, 11, 24, 9, 0, tzinfo=UTC))  # client answers Tue 09:00
    [ack] = desk.acks()
    desk.send(make_email(sender="bob@base.example", subject=f"Re: {ack['subject']}",
                         body="Here is the file you asked for.", in_reply_to=ack["message_id"]))
    desk.wait_settled()
    ticket = desk.tickets()[0]
    assert ticket["status"] == "open"
    # Paused Mon 11:00-18:00 (7h) + Tue 08:00-09:00 (1h) = 8 business hours:
    # Tue 10:00 + 8h = Tue 18:00.
    assert ticket["first_response_due"] == "2026-11-24T18:00:00Z"


def _count(desk, model, *where) -> int:
    with desk.app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_breach_alerted_exactly_once_with_two_schedulers(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock)
    second = make_desk(clock=clock, smtp=False)   # another scheduler process, own workers
    desk.send(make_email(subject="CLIENTCO-URGENT payments failing"))
    desk.wait_settled()
    assert desk.tickets()[0]["first_response_due"] == "2026-11-23T11:00:00Z"

    def scan_both() -> None:
        threads = [threading.Thread(target=breaches.scan, args=(app.services, app.dispatch))
                   for app in (desk.app, second.app) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    clock.set(MONDAY_10 + timedelta(minutes=30))          # 50%: nothing yet
    scan_both()
    assert _count(desk, Event, Event.kind.in_(("sla_at_risk", "sla_breached"))) == 0

    clock.set(MONDAY_10 + timedelta(minutes=46))          # past 75%: at risk
    scan_both()
    scan_both()
    assert _count(desk, Event, Event.kind == "sla_at_risk") == 1
    assert _count(desk, Outbox, Outbox.template == "sla_at_risk") == 1   # the assignee

    clock.set(MONDAY_10 + timedelta(hours=1, minutes=1))  # past due: breached
    scan_both()
    scan_both()
    assert _count(desk, Event, Event.kind == "sla_breached") == 1
    alerts = desk.outbox(template="sla_breached")
    # P1 breach: the assignee and the leads, once each.
    assert sorted(a["to"][0] for a in alerts) == ["dev1@agency.example", "dev2@agency.example"]
    desk.wait_settled()
    assert desk.tickets()[0]["breaches"] == ["first_response"]


def test_first_public_reply_stops_first_response_clock(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock, extra=BASECO)
    desk.send(make_email(sender="bob@base.example", subject="Where is my invoice?"))
    desk.wait_settled()
    [note] = desk.outbox(template="staff_notification")
    clock.advance(timedelta(minutes=20))
    staff_reply(desk, note, "#priority P1\nLooking at it now.")
    desk.wait_settled()
    ticket = desk.tickets()[0]
    assert ticket["first_responded_at"] == "2026-11-23T10:20:00Z"
    assert ticket["first_response_due"] is None
    # Base P1: next update 4h after the reply; resolution 2 business days from the start.
    assert ticket["next_update_due"] == "2026-11-23T14:20:00Z"
    assert ticket["resolution_due"] == "2026-11-25T10:00:00Z"
    clock.advance(timedelta(hours=10))
    breaches.scan(desk.app.services, desk.app.dispatch)
    assert _count(desk, Event, Event.kind == "sla_breached") == 1   # next_update only


def test_digest_lists_breach_and_p1_and_is_sent_once_per_period(make_desk):
    from postdesk.workflow.desk.digest import due_digests

    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock, extra=BASECO)
    desk.send(make_email(subject="CLIENTCO-URGENT payments failing"))
    desk.wait_settled()
    desk.send(make_email(sender="bob@base.example", subject="Small question"))
    desk.wait_settled()
    clock.set(MONDAY_10 + timedelta(hours=2))
    breaches.scan(desk.app.services, desk.app.dispatch)
    clock.set(datetime(2026, 11, 24, 8, 31, tzinfo=UTC))     # after 08:30 London next day
    assert len(due_digests(desk.app.services, desk.app.dispatch)) == 1
    assert due_digests(desk.app.services, desk.app.dispatch) == []   # same period: not again
    [row] = desk.outbox(template="digest")
    assert row["to"] == ["boss@agency.example"]
    assert row["subject"].startswith("Support digest 2026-11-24: 1 breaches")
    import email
    from email import policy

    text = email.message_from_bytes(desk.outbox_raw(row["id"]), policy=policy.default
                                    ).get_body(("plain",)).get_content()
    assert "  PD-1  Client Co  P1  First response  due Mon 23 Nov 11:00 UTC  late by " in text
    assert "Base Co  allowance 2h 00m, rolled over 0h 00m, used 0h 00m, remaining 2h 00m" in text


def test_resolved_ticket_closes_after_quiet_days_and_client_reply_reopens(make_desk):
    from postdesk.scheduler import close_quiet_tickets

    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock, extra=BASECO)
    desk.send(make_email(sender="bob@base.example", subject="Please reset my password"))
    desk.wait_settled()
    [note] = desk.outbox(template="staff_notification")
    desk.send(make_email(sender="dev1@agency.example", subject=f"Re: {note['subject']}",
                         body="#status resolved\nDone, you should have a reset email.",
                         in_reply_to=note["message_id"]), mail_from="dev1@agency.example")
    desk.wait_settled()
    assert desk.tickets()[0]["status"] == "resolved"
    clock.advance(timedelta(days=6, hours=23))
    assert close_quiet_tickets(desk.app.services) == 0          # close_after_days = 7
    clock.advance(timedelta(hours=2))
    assert close_quiet_tickets(desk.app.services) == 1
    assert desk.tickets()[0]["status"] == "closed"
    [relay] = desk.outbox(template="staff_reply")
    desk.send(make_email(sender="bob@base.example", subject=f"Re: {relay['subject']}",
                         body="It happened again.", in_reply_to=relay["message_id"]))
    desk.wait_settled()
    assert desk.tickets()[0]["status"] == "open"
