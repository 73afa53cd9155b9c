"""A queue by email, over real SMTP: a staff member who writes ``queue``/``mine``/``all``
to the support address gets one email, at their configured address, listing open tickets
soonest due first, each with its reply address; a forged request gets nothing."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta
from email import policy

import pytest
from sqlalchemy import select, update

from postdesk.storage.models import RawMessage, Ticket
from postdesk.workflow.rules.clock import ManualClock
from tests.support import make_email

pytestmark = pytest.mark.backends("sqlite", "postgres-redis")
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def desk_with_tickets(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock)
    for subject in ("Slow pages", "Site down", "Typo on the about page"):
        desk.send(make_email(sender="alice@client.example", subject=subject))
        desk.wait_settled()
        clock.advance(timedelta(minutes=5))
    with desk.app.sessions() as s, s.begin():
        # PD-2 is now P1 (due soonest); PD-3 nobody's.
        s.execute(update(Ticket).where(Ticket.id == 3).values(assignee_id=None))
    return desk, clock


def ask(desk, subject, sender="dev1@agency.example", mail_from=None):
    desk.send(make_email(sender=sender, subject=subject, body="thanks"),
              mail_from=mail_from or sender)
    desk.wait_settled()


def body_of(desk, row, kind="plain"):
    msg = email.message_from_bytes(desk.outbox_raw(row["id"]), policy=policy.default)
    return msg.get_body((kind,)).get_content()


def test_mine_lists_the_staff_members_open_tickets_soonest_due_first(make_desk):
    desk, _ = desk_with_tickets(make_desk)
    tickets_before = len(desk.tickets())
    ask(desk, "queue")
    [answer] = desk.outbox(template="staff_queue")
    assert answer["to"] == ["dev1@agency.example"]
    text = body_of(desk, answer)
    refs = re.findall(r"^(PD-\d+) ", text, re.M)
    assert refs == ["PD-2", "PD-1"]                   # Site down is P1: due first
    assert "P1  open" in text or "P1  new" in text
    assert "Client Co" in text and "(in 50m)" in text
    for ref in refs:
        number = ref.split("-")[1]
        assert re.search(rf"reply: support\+pd-{number}\.[0-9a-f]+@desk\.example", text)
    assert "PD-3" not in text
    assert len(desk.tickets()) == tickets_before       # read-only: no ticket made
    html = body_of(desk, answer, "html")
    assert "PD-2" in html and "mailto:support+pd-2." in html


def test_all_adds_the_unassigned_tickets(make_desk):
    desk, _ = desk_with_tickets(make_desk)
    ask(desk, "ALL")
    [answer] = desk.outbox(template="staff_queue")
    text = body_of(desk, answer)
    assert re.findall(r"^(PD-\d+) ", text, re.M) == ["PD-2", "PD-1", "PD-3"]
    assert "(unassigned)" in text


def test_replying_to_a_line_of_the_queue_works_on_that_ticket(make_desk):
    desk, _ = desk_with_tickets(make_desk)
    ask(desk, "mine")
    text = body_of(desk, desk.outbox(template="staff_queue")[0])
    address = re.search(r"reply: (support\+pd-1\.[0-9a-f]+@desk\.example)", text)[1]
    msg = make_email(sender="dev1@agency.example", to=address,
                     subject="Re: [PD-1] Slow pages", body="#priority P2\nLooking now.")
    desk.send(msg, mail_from="dev1@agency.example", rcpt=[address])
    desk.wait_settled()
    assert desk.ticket("PD-1")["priority"] == "P2"
    [relayed] = desk.outbox(template="staff_reply")
    assert relayed["to"] == ["alice@client.example"]


def test_a_forged_queue_request_gets_nothing_and_the_real_staff_member_is_told(make_desk):
    desk, _ = desk_with_tickets(make_desk)
    before = len(desk.outbox())
    ask(desk, "queue", mail_from="attacker@evil.example")
    assert desk.outbox(template="staff_queue") == []
    new = desk.outbox()[before:]
    assert [r["template"] for r in new] == ["staff_quarantine_notice"]
    assert new[0]["to"] == ["dev1@agency.example"]
    assert all("attacker@evil.example" not in r["to"] for r in desk.outbox())
    with desk.app.sessions() as s:
        raw = s.scalars(select(RawMessage).order_by(RawMessage.id.desc())).first()
        assert (raw.status, raw.reason) == ("quarantined", "unauthenticated")


def test_a_client_writing_queue_gets_a_ticket_not_the_staff_queue(make_desk):
    desk, _ = desk_with_tickets(make_desk)
    ask(desk, "queue", sender="bob@client.example")
    assert desk.outbox(template="staff_queue") == []
    assert any(t["subject"] == "queue" for t in desk.tickets())
