"""End to end over real SMTP: a first response 5 s late, with no SLA scan in between, is a
miss in the digest (compliance is "stopped on or before due", not "no breach alert")."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email import policy

import pytest
from sqlalchemy import func, select

from postdesk.storage.models import Event
from postdesk.workflow.desk.digest import build_digest, due_digests
from postdesk.workflow.rules.clock import ManualClock
from tests.support import make_email

MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)   # GMT: UTC == London
pytestmark = pytest.mark.backends("sqlite", "postgres-redis")


def test_a_first_response_5_s_late_with_no_scan_in_between_is_a_miss_in_the_digest(
        make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock)
    # Client Co, Enterprise P3: first response 5h on office hours -> due 15:00.
    desk.send(make_email(subject="Contact form broken"))
    desk.wait_settled()
    assert desk.tickets()[0]["first_response_due"] == "2026-11-23T15:00:00Z"
    [note] = desk.outbox(template="staff_notification")
    clock.set(MONDAY_10 + timedelta(hours=5, seconds=5))
    reply = make_email(sender="dev1@agency.example", subject=f"Re: {note['subject']}",
                       body="Fixed: the form works again.", in_reply_to=note["message_id"],
                       references=note["message_id"])
    desk.send(reply, mail_from="dev1@agency.example")
    desk.wait_settled()
    ticket = desk.tickets()[0]
    assert ticket["first_responded_at"] == "2026-11-23T15:00:05Z"
    assert ticket["breaches"] == ["first_response"]   # measured, though never alerted
    with desk.app.sessions() as session:   # no scan ran: no breach was ever recorded
        assert session.scalar(select(func.count()).select_from(Event).where(
            Event.kind == "sla_breached")) == 0
    clock.set(datetime(2026, 11, 24, 8, 31, tzinfo=UTC))   # next day's digest
    digest = build_digest(desk.app.services, clock.now())
    [row] = digest.compliance
    assert (row["org_name"], row["priority"]) == ("Client Co", "P3")
    [target] = row["targets"]
    assert (target["met"], target["missed"], target["percent"]) == (0, 1, 0.0)
    assert row["median_first_response"] == "5h 00m"     # 5h 00m 05s of business time
    [sent] = due_digests(desk.app.services, desk.app.dispatch)
    desk.wait_settled()
    text = email.message_from_bytes(desk.outbox_raw(sent), policy=policy.default
                                    ).get_body(("plain",)).get_content()
    assert "    First response  0 of 1 met  0.0%" in text.replace("\r\n", "\n")
    assert "late by 5s  dev1@agency.example  Contact form broken" in text
