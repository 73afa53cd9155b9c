"""Releasing an auto-reply from quarantine makes it client content (issue 17), and never
gives it staff authority (docs/security.md, "Releasing from quarantine is not a pardon").
Also what `tickets show --json` says about each message: display name and HTML part."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from postdesk.storage.models import TimeEntry
from postdesk.workflow.pipeline.quarantine import release
from postdesk.workflow.rules.clock import ManualClock
from tests.support import make_email

pytestmark = pytest.mark.backends("sqlite", "postgres-redis")

MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
STAFF = "dev1@agency.example"
ATTACKER = "attacker@evil.example"
OUT_OF_OFFICE = {"Auto-Submitted": "auto-replied"}


def quarantined(desk: Any) -> list[dict[str, Any]]:
    return [r for r in desk.raws() if r["status"] == "quarantined"]


def time_logged(desk: Any) -> int:
    with desk.app.sessions() as s:
        return int(s.scalar(select(func.coalesce(func.sum(TimeEntry.seconds), 0))))


def test_a_released_auto_reply_becomes_a_ticket_with_its_text(make_desk):
    desk = make_desk(clock=ManualClock(MONDAY_10))
    desk.send(make_email(sender="alice@client.example", subject="Out of office",
                         body="I am away until Monday; the printer is still broken.",
                         headers=OUT_OF_OFFICE))
    desk.wait_settled()
    [raw] = quarantined(desk)
    assert raw["reason"] == "auto_reply"
    assert desk.tickets() == []

    outcome = release(desk.app.services, desk.app.dispatch, raw["id"])
    desk.wait_settled()

    assert outcome == f"released message {raw['id']}: processed"
    assert quarantined(desk) == []
    [ticket] = desk.tickets()
    assert (ticket["requester"], ticket["org"]) == ("alice@client.example", "clientco")
    [message] = desk.ticket(ticket["ref"])["messages"][:1]
    assert (message["direction"], message["kind"]) == ("in", "public")
    assert "the printer is still broken" in message["full_text"]


def test_a_released_auto_reply_from_a_staff_address_never_runs_staff_commands(make_desk):
    # The attack: a forged out-of-office "from" staff, answering a staff notification with
    # the staff token and carrying commands. It is quarantined; an operator releases it.
    desk = make_desk(clock=ManualClock(MONDAY_10), desk_extra="staff_require_dkim = true")
    desk.send(make_email(sender="alice@client.example", subject="Checkout is broken"))
    desk.wait_settled()
    [note] = desk.outbox(template="staff_notification")
    forged = make_email(sender=STAFF, subject=f"Re: {note['subject']}",
                        body=f"#cc {ATTACKER}\n#status closed\n#priority P1\n#time 9h\n"
                             "All fixed, log in at http://evil.example/login",
                        in_reply_to=note["message_id"], references=note["message_id"],
                        headers=OUT_OF_OFFICE)
    desk.send(forged, mail_from=STAFF)
    desk.wait_settled()
    [raw] = quarantined(desk)
    assert raw["reason"] == "auto_reply"
    before = desk.ticket("PD-1")

    outcome = release(desk.app.services, desk.app.dispatch, raw["id"], org="clientco")
    desk.wait_settled()

    after = desk.ticket("PD-1")
    unchanged = ("status", "priority", "assignee", "cc", "first_responded_at", "resolved_at")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert time_logged(desk) == 0
    assert desk.outbox(template="staff_reply") == []
    assert desk.outbox(to=ATTACKER) == []
    assert outcome == f"released message {raw['id']}: processed"
    # It is client content of the release org (where it threads is the trust decision's),
    # written in by its sender, not a staff message.
    found = [(t["org"], m) for t in desk.tickets() for m in desk.ticket(t["ref"])["messages"]
             if "All fixed" in m["full_text"]]
    assert [(org, m["direction"], m["kind"], m["from"]) for org, m in found] == [
        ("clientco", "in", "public", STAFF)]


def test_tickets_show_json_names_the_sender_and_says_whether_html_was_stored(make_desk):
    desk = make_desk(clock=ManualClock(MONDAY_10))
    msg = make_email(sender="Alice Example <alice@client.example>", subject="Broken",
                     body="Plain words.\n\n> quoted history\n")
    msg.add_alternative("<p>Plain <b>words</b>.</p>", subtype="html")
    desk.send(msg)
    desk.wait_settled()
    [first] = desk.ticket("PD-1")["messages"][:1]
    assert (first["from"], first["from_name"], first["has_html"]) == (
        "alice@client.example", "Alice Example", True)
    assert "quoted history" in first["full_text"] and "quoted history" not in first["text"]
