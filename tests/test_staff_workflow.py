"""Staff work from their mail client, over real SMTP: relayed replies (quoted history
stripped, threaded for Gmail and Outlook), commands, internal notes, forged replies,
follow-ups, allowance and the `balance` request."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email import policy

import pytest
from sqlalchemy import func, select

from postdesk.storage.models import Event, TimeEntry
from postdesk.workflow.desk import breaches
from postdesk.workflow.rules.clock import ManualClock
from tests.support import BASECO, make_email

MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

GMAIL_QUOTE = """
On Mon, 23 Nov 2026 at 10:00, Acme Digital Support <support@desk.example> wrote:
> New ticket on PD-1 from alice@client.example
>
> Checkout is broken.
"""
OUTLOOK_QUOTE = """

-----Original Message-----
From: Acme Digital Support <support@desk.example>
Sent: Monday, November 23, 2026 10:00 AM
To: Dev One <dev1@agency.example>
Subject: [PD-1] New ticket (P3): Checkout is broken

Checkout is broken.
"""
OUTLOOK_FROM_SENT = """

________________________________
From: Acme Digital Support <support@desk.example>
Sent: Monday, November 23, 2026 10:00
To: Dev One
Subject: [PD-1] Checkout is broken

Checkout is broken.
"""
APPLE_QUOTE = """

> On 23 Nov 2026, at 10:00, Acme Digital Support <support@desk.example> wrote:
>
> Checkout is broken.
"""


# Broker-independent behaviour: SQLite+Stub and PostgreSQL+Redis are enough here;
# the foundation tests cover RabbitMQ end to end.
pytestmark = pytest.mark.backends("sqlite", "postgres-redis")


def open_ticket(desk, sender="alice@client.example", subject="Checkout is broken"):
    client = make_email(sender=sender, subject=subject, body="Checkout is broken.")
    desk.send(client)
    desk.wait_settled()
    note = desk.outbox(template="staff_notification")[-1]
    return client, note


def reply_from_staff(desk, note, body, sender="dev1@agency.example", mail_from=None,
                     in_reply_to=None, rcpt=None):
    msg = make_email(sender=sender, subject=f"Re: {note['subject']}", body=body,
                     in_reply_to=in_reply_to or note["message_id"],
                     references=in_reply_to or note["message_id"])
    desk.send(msg, mail_from=mail_from or sender, rcpt=rcpt)
    desk.wait_settled()
    return msg


def client_copy(desk) -> email.message.EmailMessage:
    [row] = desk.outbox(template="staff_reply")
    return email.message_from_bytes(desk.outbox_raw(row["id"]), policy=policy.default)


def test_staff_reply_with_commands_reaches_client_stripped_and_threaded(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock)
    client, note = open_ticket(desk)
    assert note["to"] == ["dev1@agency.example"]
    clock.advance(timedelta(minutes=15))
    reply_from_staff(desk, note, "#priority P1\n#time 30m\nFixed, please check.\n" + GMAIL_QUOTE)

    sent = client_copy(desk)
    assert sent["To"] == "alice@client.example"
    assert sent["In-Reply-To"] == client["Message-ID"]
    assert client["Message-ID"] in sent["References"]
    assert sent["Thread-Topic"] == "Checkout is broken"
    assert sent["Thread-Index"]
    assert sent["Auto-Submitted"] is None          # a person's reply, not an automatic one
    text = sent.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith("Fixed, please check.\n")
    assert "#priority" not in text and "#time" not in text
    assert "wrote:" not in text and "New ticket on PD-1" not in text
    assert "ticket PD-1" in text                    # the ticket footer

    ticket = desk.tickets()[0]
    assert ticket["priority"] == "P1"
    assert ticket["first_responded_at"] == "2026-11-23T10:15:00Z"
    assert ticket["first_response_due"] is None
    assert ticket["status"] == "open"
    with desk.app.sessions() as s:
        assert s.scalar(select(func.sum(TimeEntry.seconds))) == 30 * 60


def test_outlook_and_apple_quotes_are_stripped(make_desk):
    desk = make_desk()
    for n, quote in enumerate((OUTLOOK_QUOTE, OUTLOOK_FROM_SENT, APPLE_QUOTE)):
        _, note = open_ticket(desk, subject=f"Problem {n}")
        reply_from_staff(desk, desk.outbox(template="staff_notification")[n],
                         f"Answer {n}: try again now." + quote)
    rows = desk.outbox(template="staff_reply")
    assert len(rows) == 3
    for n, row in enumerate(rows):
        sent = email.message_from_bytes(desk.outbox_raw(row["id"]), policy=policy.default)
        text = sent.get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert text.startswith(f"Answer {n}: try again now.\n")
        assert "Original Message" not in text and "Sent:" not in text and "wrote:" not in text


def test_internal_note_reaches_staff_view_only(make_desk):
    desk = make_desk()
    _, note = open_ticket(desk)
    reply_from_staff(desk, note, "#internal\nClient's server is out of disk, ask ops.")
    assert desk.outbox(template="staff_reply") == []
    messages = desk.ticket("PD-1")["messages"]
    internal = [m for m in messages if m["kind"] == "internal"]
    assert [m["text"] for m in internal] == ["Client's server is out of disk, ask ops."]


def test_only_commands_send_nothing_to_client(make_desk):
    desk = make_desk()
    _, note = open_ticket(desk)
    reply_from_staff(desk, note, "#assign dev2@agency.example\n#cc bob@client.example\n")
    assert desk.outbox(template="staff_reply") == []
    ticket = desk.tickets()[0]
    assert ticket["assignee"] == "dev2@agency.example"
    assert ticket["cc"] == ["bob@client.example"]


def test_bad_command_is_answered_to_staff_and_nothing_reaches_client(make_desk):
    desk = make_desk()
    _, note = open_ticket(desk)
    reply_from_staff(desk, note, "#priority P7\n#prio P1\nFixed.")
    assert desk.outbox(template="staff_reply") == []
    [err] = desk.outbox(template="command_errors")
    assert err["to"] == ["dev1@agency.example"]
    body = desk.outbox_raw(err["id"]).decode()
    assert "#priority P7" in body and "#prio P1" in body
    assert desk.tickets()[0]["priority"] == "P3"


def test_forged_staff_replies_execute_nothing(make_desk):
    desk = make_desk()
    _, note = open_ticket(desk)
    # 1. Staff From header, but the envelope sender is a client's address.
    reply_from_staff(desk, note, "#priority P1\n#status resolved\nDone.",
                     mail_from="alice@client.example")
    # 2. A reply token with a wrong signature, and no real postdesk Message-ID.
    forged_mid = note["message_id"].replace(note["message_id"][-30:-25], "00000")
    reply_from_staff(desk, note, "#priority P1\nDone.", in_reply_to=forged_mid,
                     rcpt=["support+pd-1.0123456789abcdef0123@desk.example"])
    ticket = desk.tickets()[0]
    assert ticket["priority"] == "P3" and ticket["status"] == "new"
    assert desk.outbox(template="staff_reply") == []
    reasons = [r["reason"] for r in desk.raws() if r["status"] == "quarantined"]
    assert reasons == ["unauthenticated", "unauthenticated"]


def test_staff_email_never_makes_a_ticket_unless_it_names_a_client(make_desk):
    # This desk cannot verify staff mail (no DKIM), so its operator accepts an exact
    # envelope for tickets opened on a client's behalf (the trust issue's opt-in).
    desk = make_desk(desk_extra="staff_unverified_on_behalf = true")
    desk.send(make_email(sender="dev1@agency.example", subject="Note to self"),
              mail_from="dev1@agency.example")
    desk.wait_settled()
    assert desk.tickets() == []
    desk.send(make_email(sender="dev1@agency.example", subject="Phone call: DNS change",
                         body="#requester alice@client.example\nAlice phoned about DNS."),
              mail_from="dev1@agency.example")
    desk.wait_settled()
    [ticket] = desk.tickets()
    assert ticket["requester"] == "alice@client.example"
    assert ticket["org"] == "clientco"
    assert ticket["assignee"] == "dev1@agency.example"


def test_followup_passing_without_update_alerts_lead_once(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock)
    _, note = open_ticket(desk)
    reply_from_staff(desk, note, "#followup +2h\nLooking into it, I'll update you soon.")
    assert desk.tickets()[0]["followup_due"] == "2026-11-23T12:00:00Z"
    clock.set(MONDAY_10 + timedelta(hours=2, minutes=1))
    for _ in range(3):
        breaches.scan(desk.app.services, desk.app.dispatch)
    missed = desk.outbox(template="followup_missed")
    assert "dev2@agency.example" in [m["to"][0] for m in missed]        # the lead
    assert len([m for m in missed if m["to"] == ["dev2@agency.example"]]) == 1
    with desk.app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Event)
                        .where(Event.kind == "followup_missed")) == 1


def test_followup_met_by_public_update_raises_no_alert(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock)
    _, note = open_ticket(desk)
    reply_from_staff(desk, note, "#followup +2h\n#internal\nwill call them")
    clock.advance(timedelta(hours=1))
    reply_from_staff(desk, note, "Here is the update I promised.")
    clock.advance(timedelta(hours=2))
    breaches.scan(desk.app.services, desk.app.dispatch)
    assert desk.outbox(template="followup_missed") == []


def test_sign_off_only_from_an_approver(make_desk):
    desk = make_desk()
    _, note = open_ticket(desk)
    reply_from_staff(desk, note, "#status awaiting_signoff\nFix is on UAT, please approve.")
    [relay] = desk.outbox(template="staff_reply")
    desk.send(make_email(sender="alice@client.example", subject=f"Re: {relay['subject']}",
                         body="Approved, thanks!", in_reply_to=relay["message_id"]))
    desk.wait_settled()
    assert desk.tickets()[0]["status"] == "awaiting_signoff"
    [refusal] = desk.outbox(template="signoff_not_approver")
    assert "ops@partner.example" in desk.outbox_raw(refusal["id"]).decode()
    desk.send(make_email(sender="ops@partner.example", subject=f"Re: {relay['subject']}",
                         body="Signed off. OK to deploy.", in_reply_to=relay["message_id"]))
    desk.wait_settled()
    assert desk.tickets()[0]["status"] == "resolved"


def test_balance_after_two_months_with_rollover_and_cap(make_desk):
    """Base plan: 2h a month, rollover capped at 4h. October: 30m used -> 1h30 rolls
    over... computed month by month below."""
    clock = ManualClock(datetime(2026, 9, 7, 10, 0, tzinfo=UTC))
    desk = make_desk(clock=clock, extra=BASECO)
    _, note = open_ticket(desk, sender="bob@base.example", subject="Retainer work")
    # The org's first month is September (its first ticket): nothing logged -> 2h rolls
    # over. October: 2h + 2h - 30m = 3h30, under the 4h cap, all rolls over.
    # November: 2h + 3h30 - 1h45 = 3h45.
    clock.set(datetime(2026, 10, 5, 10, 0, tzinfo=UTC))
    reply_from_staff(desk, note, "#time 30m\n#internal\nOctober work")
    clock.set(datetime(2026, 11, 2, 10, 0, tzinfo=UTC))
    reply_from_staff(desk, note, "#time 1h45m\n#internal\nNovember work")
    tickets_before = len(desk.tickets())

    desk.send(make_email(sender="bob@base.example", subject="balance", body=""))
    desk.wait_settled()
    assert len(desk.tickets()) == tickets_before      # no ticket for a balance request
    [answer] = desk.outbox(template="balance")
    assert answer["to"] == ["bob@base.example"]
    text = email.message_from_bytes(desk.outbox_raw(answer["id"]), policy=policy.default
                                    ).get_body(("plain",)).get_content()
    text = text.replace("\r\n", "\n")
    assert "2026-11" in text
    assert "Monthly allowance:   2h 00m" in text
    assert "Rolled over:         3h 30m" in text
    assert "Used this month:     1h 45m" in text
    assert "Remaining:           3h 45m" in text
    assert "PD-1  1h 45m  Retainer work" in text


def test_rollover_cap_hit(make_desk):
    """Three idle months: 2h + 2h + 2h would be 6h, the cap keeps 4h."""
    clock = ManualClock(datetime(2026, 8, 3, 10, 0, tzinfo=UTC))
    desk = make_desk(clock=clock, extra=BASECO)
    _, note = open_ticket(desk, sender="bob@base.example", subject="Retainer")
    reply_from_staff(desk, note, "#time 15m\n#internal\nAugust")     # Aug: 1h45 left
    clock.set(datetime(2026, 11, 10, 10, 0, tzinfo=UTC))
    desk.send(make_email(sender="bob@base.example", subject="Balance", body=""))
    desk.wait_settled()
    [answer] = desk.outbox(template="balance")
    text = desk.outbox_raw(answer["id"]).decode()
    # Aug 1h45 -> Sep 3h45 -> Oct 5h45 capped 4h -> Nov gets 4h rollover, 6h remaining.
    assert "Rolled over:         4h 00m" in text
    assert "Remaining:           6h 00m" in text


def test_time_over_allowance_warns_lead_and_requester_once(make_desk):
    clock = ManualClock(MONDAY_10)
    desk = make_desk(clock=clock, extra=BASECO)
    _, note = open_ticket(desk, sender="bob@base.example", subject="Big job")
    reply_from_staff(desk, note, "#time 1h30m\n#internal\npart 1")
    assert desk.outbox(template="allowance_exceeded") == []
    reply_from_staff(desk, note, "#time 1h\n#internal\npart 2")      # 2h30 > 2h
    reply_from_staff(desk, note, "#time 1h\n#internal\npart 3")
    warned = sorted(w["to"][0] for w in desk.outbox(template="allowance_exceeded"))
    assert warned == ["bob@base.example", "dev2@agency.example"]


def test_staff_domain_with_dkim_runs_commands_only_from_signed_mail(make_desk):
    from email.policy import SMTP
    from pathlib import Path

    import dkim

    keys = Path(__file__).parent / "fixtures" / "dkim"

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        if name == b"test._domainkey.agency.example.":
            return b"v=DKIM1; k=rsa; p=" + (keys / "client.example.pub.b64").read_bytes().strip()
        return None

    desk = make_desk(desk_extra="staff_require_dkim = true")
    desk.app.dkim_dns = dns
    _, note = open_ticket(desk)
    unsigned = make_email(sender="dev1@agency.example", subject=f"Re: {note['subject']}",
                          body="#priority P1\nOn it.", in_reply_to=note["message_id"])
    desk.send(unsigned, mail_from="dev1@agency.example")
    desk.wait_settled()
    assert desk.tickets()[0]["priority"] == "P3"
    assert desk.raws()[-1]["reason"] == "unauthenticated"

    signed = make_email(sender="dev1@agency.example", subject=f"Re: {note['subject']}",
                        body="#priority P1\nOn it now.", in_reply_to=note["message_id"])
    raw = signed.as_bytes(policy=SMTP)
    raw = dkim.sign(raw, b"test", b"agency.example", (keys / "client.example.key").read_bytes(),
                    include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw
    desk.send(raw, mail_from="dev1@agency.example")
    desk.wait_settled()
    assert desk.tickets()[0]["priority"] == "P1"
    assert len(desk.outbox(template="staff_reply")) == 1
