"""The acknowledgement answers the client's questions: what their priority means, when
to expect an answer in their org's own zone, the support hours of their plan, how to
escalate (when the org has a keyword) and how to reply."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy

import pytest

from postdesk.workflow.rules.clock import ManualClock
from tests.support import make_email

MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
pytestmark = pytest.mark.backends("sqlite")

TOKYO = """
[plans.always-on]
calendar = "always"
first_response = { P3 = "4h" }

[[orgs]]
slug = "tokyoco"
name = "Tokyo Co"
plan = "always-on"
domains = ["tokyo.example"]
timezone = "Asia/Tokyo"
"""


def parts(raw: bytes) -> tuple[str, str]:
    msg = email.message_from_bytes(raw, policy=policy.default)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    return text, msg.get_body(("html",)).get_content()


def test_the_acknowledgement_explains_priority_hours_escalation_and_replying(make_desk):
    desk = make_desk(clock=ManualClock(MONDAY_10))
    desk.send(make_email(subject="Contact form broken"))
    desk.wait_settled()
    [ack] = desk.acks()
    text, html = parts(desk.outbox_raw(ack["id"]))
    # Client Co, Enterprise P3: 5h on the UK office calendar -> Mon 15:00 London.
    assert "Priority: P3, normal - a question, a change request, or a problem with a " \
           "workaround\n" in text
    assert "You can expect our first answer by Mon 23 Nov 2026 15:00 GMT " \
           "(Europe/London time).\n" in text
    assert "Our support hours for this priority: Mon-Fri 08:00-18:00 (Europe/London " \
           "time), closed on public holidays (GB-ENG).\n" in text
    assert "reply with CLIENTCO-URGENT in the\nsubject" in text
    assert "simply reply to this email" in text and "keep PD-1\nin the subject" in text
    for fact in ["normal - a question", "Mon 23 Nov 2026 15:00 GMT", "CLIENTCO-URGENT",
                 "Mon-Fri 08:00-18:00 (Europe/London time)", "simply reply to this email"]:
        assert fact in html, fact


def test_a_p1_is_not_told_how_to_escalate_and_a_24_7_org_sees_its_own_zone(make_desk):
    desk = make_desk(clock=ManualClock(MONDAY_10), extra=TOKYO)
    desk.send(make_email(subject="CLIENTCO-URGENT checkout broken"))
    desk.send(make_email(sender="ken@tokyo.example", subject="Question"))
    desk.wait_settled()
    acks = {a["to"][0]: a for a in desk.acks()}
    p1, _ = parts(desk.outbox_raw(acks["alice@client.example"]["id"]))
    assert "Priority: P1, urgent" in p1
    assert "Our support hours for this priority: 24 hours a day, every day.\n" in p1
    assert "CLIENTCO-URGENT in the" not in p1
    tokyo, _ = parts(desk.outbox_raw(acks["ken@tokyo.example"]["id"]))
    # 24/7 plan, 4h from 10:00 UTC = 14:00 UTC = 23:00 in Tokyo; no keyword, no advice.
    assert "first answer by Mon 23 Nov 2026 23:00 JST (Asia/Tokyo time).\n" in tokyo
    assert "emergency" not in tokyo


def test_an_orgs_own_acknowledgement_gets_the_same_facts_and_passes_config_check(make_desk):
    from pathlib import Path

    from postdesk.mail.render import check_overrides

    desk = make_desk(clock=ManualClock(MONDAY_10))
    overrides = Path(desk.config.desk.data_dir) / "templates"
    own = overrides / "orgs" / "clientco"
    own.mkdir(parents=True)
    (own / "acknowledgement.txt").write_text(
        "{{ ref }}: P3 means a normal request. Hours: {{ support_hours }}."
        " Urgent? Write {{ escalation_keyword }}. Answer by {{ first_response_due }} "
        "({{ org_timezone }}).\n")
    assert check_overrides(overrides) == []
    desk.send(make_email(subject="Contact form broken"))
    desk.wait_settled()
    [ack] = desk.acks()
    text, _ = parts(desk.outbox_raw(ack["id"]))
    assert text == ("PD-1: P3 means a normal request. Hours: Mon-Fri "
                    "08:00-18:00 (Europe/London time), closed on public holidays (GB-ENG). "
                    "Urgent? Write CLIENTCO-URGENT. Answer by Mon 23 Nov 2026 15:00 GMT "
                    "(Europe/London).\n")
