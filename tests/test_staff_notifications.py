"""Notifications staff can work from, over real SMTP: the same facts in the text and
HTML parts, due times in the staff member's zone, and one thread per ticket and
recipient (References to one root, Outlook Thread-Index)."""

from __future__ import annotations

import base64
import email
from datetime import UTC, datetime, timedelta
from email import policy

import pytest
from sqlalchemy import select

from postdesk.mail.tokens import read_message_id
from postdesk.storage.models import Staff, Ticket
from postdesk.workflow.rules.clock import ManualClock
from tests.mailshapes import reply
from tests.support import make_email

pytestmark = pytest.mark.backends("sqlite")
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
HINT = "Commands on the first lines:"


def parsed(desk, row):
    return email.message_from_bytes(desk.outbox_raw(row["id"]), policy=policy.default)


def test_two_client_emails_on_one_ticket_thread_to_one_root_and_show_the_hint(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock)
    first = make_email(subject="Checkout is broken", body="Checkout is broken.")
    desk.send(first)
    desk.wait_settled()
    clock.advance(timedelta(minutes=20))
    ack = desk.acks()[0]
    second = reply("gmail", sender="alice@client.example", subject=f"Re: {ack['subject']}",
                   text="It also fails on mobile.", quoted="We have your request.",
                   in_reply_to=ack["message_id"])
    desk.send(second)
    desk.wait_settled()

    notes = [parsed(desk, row) for row in desk.outbox(template="staff_notification")]
    assert len(notes) == 2 and all(n["To"] == "dev1@agency.example" for n in notes)
    roots = {n["References"].split()[0] for n in notes}
    assert len(roots) == 1
    [root] = roots
    assert all(n["In-Reply-To"] == root for n in notes)
    token = read_message_id(b"test-secret-key", root)
    assert token is not None and token.purpose == "staff" and token.ticket_id == 1
    assert notes[0]["Subject"] == notes[1]["Subject"] == "[PD-1] Checkout is broken"
    # Outlook: one 22-byte header block for the ticket, one child block per notification.
    indexes = [base64.b64decode(n["Thread-Index"]) for n in notes]
    assert indexes[0][:22] == indexes[1][:22]
    assert (len(indexes[0]), len(indexes[1])) == (27, 32)

    for note, new_text in zip(notes, ["Checkout is broken.", "It also fails on mobile."],
                              strict=True):
        html = note.get_body(("html",)).get_content()
        text = note.get_body(("plain",)).get_content()
        for body in (html, text):
            assert HINT in body and "#priority P1" in body
            assert new_text in body
            assert "Client Co" in body and "P3" in body
    assert "We have your request." not in notes[1].get_body(("html",)).get_content().split(
        "Last messages")[0]


def test_due_times_are_shown_in_the_staff_members_zone(make_desk):
    desk = make_desk(clock=ManualClock(MONDAY_10), extra="""
[[staff]]
email = "nyc@agency.example"
name = "New York"
timezone = "America/New_York"
""")
    desk.send(make_email(sender="alice@client.example", subject="Slow pages"))
    desk.wait_settled()
    with desk.app.sessions() as s:
        s.get(Ticket, 1).assignee_id = _staff_id(s, "nyc@agency.example")
        s.commit()
    desk.send(make_email(sender="alice@client.example", subject="Re: [PD-1] Slow pages",
                         body="Still slow."))
    desk.wait_settled()
    [local] = desk.outbox(template="staff_notification", to="dev1@agency.example")
    [nyc] = desk.outbox(template="staff_notification", to="nyc@agency.example")
    # Enterprise P3: first response 5 business hours from Mon 10:00 London = 15:00 GMT.
    assert "first response due: Mon 23 Nov 2026 15:00 UTC" in parsed(
        desk, local).get_body(("plain",)).get_content()
    nyc_mail = parsed(desk, nyc)
    assert "first response due: Mon 23 Nov 2026 10:00 EST" in nyc_mail.get_body(
        ("plain",)).get_content()
    # The HTML part says the same.
    html = nyc_mail.get_body(("html",)).get_content()
    assert "first response due</td><td>Mon 23 Nov 2026 10:00 EST" in html


def _staff_id(session, address):
    return session.scalar(select(Staff.id).where(Staff.email == address))


def test_a_p1_page_and_the_notification_share_the_staff_members_thread(make_desk):
    desk = make_desk(clock=ManualClock(MONDAY_10))
    desk.send(make_email(sender="alice@client.example", subject="Site down",
                         body="The whole site is down."))
    desk.wait_settled()
    [page] = desk.outbox(template="p1_page", to="dev1@agency.example")
    [note] = desk.outbox(template="staff_notification", to="dev1@agency.example")
    [lead_page] = desk.outbox(template="p1_page", to="dev2@agency.example")
    roots = {parsed(desk, row)["References"] for row in (page, note)}
    assert len(roots) == 1
    assert parsed(desk, lead_page)["References"] not in roots   # one thread per person
