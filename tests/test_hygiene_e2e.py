"""Mail hygiene over real SMTP: out-of-office replies, vacation loops, DSN bounces, DKIM
sender trust, floods, header injection, quarantine release and drop."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select

from postdesk.workflow.pipeline.quarantine import QuarantineActionError, drop, release
from tests.support import make_email

FIXTURES = Path(__file__).parent / "fixtures" / "dkim"
DKIM_ORG = """
[[orgs]]
slug = "secureco"
name = "Secure Co"
plan = "base"
domains = ["client.example.org"]
require_dkim = true
escalation_keyword = "SECURE-URGENT"
"""


# Broker-independent behaviour: SQLite+Stub and PostgreSQL+Redis are enough here;
# the foundation tests cover RabbitMQ end to end.
pytestmark = pytest.mark.backends("sqlite", "postgres-redis")


def vacation_reply(to_email: dict, sender: str = "alice@client.example") -> EmailMessage:  # type: ignore[type-arg]
    return make_email(sender=sender, subject=f"Out of Office: {to_email['subject']}",
                      body="I am away until Monday.", in_reply_to=to_email["message_id"],
                      headers={"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"})


def test_out_of_office_reply_is_recorded_and_never_answered(make_desk):
    desk = make_desk()
    desk.send(make_email(subject="Broken form"))
    desk.wait_settled()
    [ack] = desk.acks()
    before = len(desk.outbox())
    # The client's vacation responder answers our acknowledgement, with a null sender.
    desk.send(vacation_reply(ack), mail_from="")
    desk.wait_settled()
    assert len(desk.outbox()) == before               # postdesk sends nothing back
    ticket = desk.ticket("PD-1")
    assert ticket["status"] == "new"                  # not reopened, clocks untouched
    assert ticket["messages"][-1]["kind"] == "system"
    assert len(desk.tickets()) == 1


def test_vacation_responder_and_postdesk_stop_after_one_each(make_desk):
    """A responder that answers everything, even our automatic mail: one email each way."""
    desk = make_desk()
    desk.send(make_email(subject="Help", sender="carol@client.example"))
    desk.wait_settled()
    to_carol = [o for o in desk.outbox() if "carol@client.example" in o["to"]]
    assert len(to_carol) == 1                          # the acknowledgement
    for _ in range(3):                                 # the responder keeps answering
        latest = [o for o in desk.outbox() if "carol@client.example" in o["to"]][-1]
        desk.send(vacation_reply(latest, sender="carol@client.example"),
                  mail_from="carol@client.example")
        desk.wait_settled()
    assert len([o for o in desk.outbox() if "carol@client.example" in o["to"]]) == 1


def dsn_for(outbox_row: dict, raw_sent: bytes) -> bytes:
    original = email.message_from_bytes(raw_sent, policy=policy.default)
    rcpt = outbox_row["to"][0]
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.client.example>\r\n"
        "To: support@desk.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.client.example>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nThe mail system could not deliver your "
        f"message to <{rcpt}>: user unknown.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.client.example\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {original['From']}\r\nTo: {rcpt}\r\nSubject: {original['Subject']}\r\n"
        f"Message-ID: {original['Message-ID']}\r\n"
        "--B--\r\n").encode()


def test_dsn_marks_outbox_bounced_and_makes_no_ticket(make_desk):
    desk = make_desk()
    desk.send(make_email(subject="Please call me", sender="gone@client.example"))
    desk.wait_settled()
    [ack] = desk.acks()
    desk.send(dsn_for(ack, desk.outbox_raw(ack["id"])), mail_from="")
    desk.wait_settled()
    assert len(desk.tickets()) == 1
    [ack] = desk.acks()
    assert ack["status"] == "bounced"
    assert ack["bounced_address"] == "gone@client.example"
    bounce = [r for r in desk.raws() if r["reason"] == "bounce"]
    assert len(bounce) == 1 and bounce[0]["status"] == "quarantined"
    # The assignee hears about it.
    assignee = desk.tickets()[0]["assignee"]
    assert assignee in ("dev1@agency.example", "dev2@agency.example")   # rota of the week
    assert [n["to"] for n in desk.outbox(template="bounce_notice")] == [[assignee]]


def _dkim_dns(name: bytes, timeout: int = 5) -> bytes | None:
    if name == b"test._domainkey.client.example.org.":
        return b"v=DKIM1; k=rsa; p=" + (FIXTURES / "client.example.pub.b64").read_bytes().strip()
    return None


def _signed(msg: EmailMessage) -> bytes:
    raw = msg.as_bytes(policy=policy.SMTP)
    key = (FIXTURES / "client.example.key").read_bytes()
    return dkim.sign(raw, b"test", b"client.example.org", key,
                     include_headers=[b"from", b"to", b"subject", b"message-id", b"date"]) + raw


def test_require_dkim_quarantines_forgery_and_accepts_signed_mail(make_desk):
    desk = make_desk(extra=DKIM_ORG)
    desk.app.dkim_dns = _dkim_dns
    forged = make_email(sender="ceo@client.example.org", subject="Wire the money SECURE-URGENT")
    desk.send(forged)
    tampered = _signed(make_email(sender="ceo@client.example.org", subject="Signed then edited"))
    desk.send(tampered.replace(b"Hello, it broke.", b"Hello, it broke!"),
              mail_from="ceo@client.example.org")
    desk.wait_settled()
    assert desk.tickets() == []
    assert sorted(r["reason"] for r in desk.raws()) == ["unauthenticated", "unauthenticated"]

    genuine = _signed(make_email(sender="ceo@client.example.org",
                                 subject="Genuine request SECURE-URGENT"))
    desk.send(genuine, mail_from="ceo@client.example.org")
    desk.wait_settled()
    [ticket] = desk.tickets()
    assert ticket["org"] == "secureco"
    assert ticket["priority"] == "P1"          # authenticated contact: keyword honoured


def test_trusted_authentication_results_header_is_accepted(make_desk):
    desk = make_desk(extra=DKIM_ORG, desk_extra='trusted_authserv_ids = ["mx.desk.example"]')
    ok = make_email(sender="ceo@client.example.org", subject="Via our MX", headers={
        "Authentication-Results": "mx.desk.example; dkim=pass header.d=client.example.org; "
                                  "dmarc=pass header.from=client.example.org"})
    spoofed = make_email(sender="ceo@client.example.org", subject="Self-asserted", headers={
        "Authentication-Results": "evil.example; dmarc=pass header.from=client.example.org"})
    desk.send(ok)
    desk.send(spoofed)
    desk.wait_settled()
    assert [t["subject"] for t in desk.tickets()] == ["Via our MX"]
    assert [r["reason"] for r in desk.raws() if r["status"] == "quarantined"] == \
        ["unauthenticated"]


@pytest.mark.slow
def test_flood_of_200_messages_is_throttled(make_desk):
    desk = make_desk()
    for i in range(200):
        desk.send(make_email(sender="bot@client.example", subject=f"Alert #{i}"))
    desk.wait_settled(timeout=120)
    assert len(desk.tickets()) == 30
    reasons = [r["reason"] for r in desk.raws()]
    assert reasons.count("flood") == 170
    to_bot = [o for o in desk.outbox() if o["to"] == ["bot@client.example"]]
    assert len([o for o in to_bot if o["status"] != "suppressed"]) <= 5


def test_header_injection_in_subject_and_name_is_neutralised(make_desk):
    desk = make_desk()
    raw = (b"From: =?utf-8?q?Eve=0D=0ABcc=3A_victim=40else=2Eexample?= <eve@client.example>\r\n"
           b"To: support@desk.example\r\n"
           b"Subject: =?utf-8?q?Hi=0D=0ABcc=3A_victim=40else=2Eexample?=\r\n"
           b"Message-ID: <inject@client.example>\r\n\r\n<script>alert(1)</script>\r\n")
    desk.send(raw, mail_from="eve@client.example")
    desk.wait_settled()
    [ack] = desk.acks()
    sent = desk.outbox_raw(ack["id"])
    headers = sent.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in headers
    parsed = email.message_from_bytes(sent, policy=policy.default)
    assert parsed["Bcc"] is None
    html = parsed.get_body(("html",)).get_content()
    assert "<script>" not in html


def test_quarantine_release_and_drop(make_desk):
    desk = make_desk()
    desk.send(make_email(sender="newclient@prospect.example", subject="Can you help?"))
    desk.send(make_email(sender="spam@spam.example", subject="Cheap pills"))
    desk.wait_settled()
    first, second = desk.raws()
    assert first["reason"] == second["reason"] == "unknown_sender"

    assert release(desk.app.services, desk.app.dispatch, first["id"], org="clientco") == \
        f"released message {first['id']}: processed"
    [ticket] = desk.tickets()
    assert ticket["requester"] == "newclient@prospect.example"
    assert ticket["org"] == "clientco"

    assert drop(desk.app.services, second["id"]) == f"dropped message {second['id']}"
    statuses = {r["id"]: r["status"] for r in desk.raws()}
    assert statuses == {first["id"]: "processed", second["id"]: "dropped"}
    with pytest.raises(QuarantineActionError):
        release(desk.app.services, desk.app.dispatch, second["id"])


def test_no_notice_to_automatic_mail_from_unknown_senders(make_desk):
    desk = make_desk()
    desk.send(make_email(sender="noreply@newsletter.example", subject="Weekly news",
                         headers={"Precedence": "bulk", "List-Id": "<news.newsletter.example>"}))
    desk.wait_settled()
    assert desk.outbox() == []
    [raw] = desk.raws()
    assert raw["reason"] == "auto_reply"


def test_attachments_kept_cleaned_and_limited(make_desk):
    desk = make_desk(desk_extra="max_attachment_bytes = 10000")
    msg = make_email(subject="Screenshots attached")
    msg.add_alternative("<p>See <img src=\"cid:shot1\"> <script>alert(1)</script></p>",
                        subtype="html")
    msg.get_payload()[1].add_related(b"\x89PNG fake image bytes", maintype="image",
                                     subtype="png", cid="<shot1>", filename="shot.png",
                                     disposition="inline")
    msg.add_attachment(b"log line\n" * 10, maintype="text", subtype="plain",
                       filename="../../etc/passwd")
    msg.add_attachment(b"x" * 20000, maintype="application", subtype="octet-stream",
                       filename="huge.bin")
    forwarded = make_email(sender="bob@client.example", subject="The original report")
    msg.add_attachment(forwarded)
    desk.send(msg)
    desk.wait_settled()
    [message] = [m for m in desk.ticket("PD-1")["messages"] if m["direction"] == "in"]
    by_name = {a["filename"]: a for a in message["attachments"]}
    assert "passwd" in by_name and by_name["passwd"]["kept"]
    assert not any("/" in name or ".." in name for name in by_name)
    assert by_name["huge.bin"]["kept"] is False and by_name["huge.bin"]["size"] == 20000
    assert by_name["shot.png"]["inline"] is True
    assert any(a["content_type"] == "message/rfc822" for a in message["attachments"])
    with desk.app.sessions() as s:
        from postdesk.storage.models import Message as MessageRow

        html = s.scalar(select(MessageRow.html).where(MessageRow.direction == "in"))
    assert "<script>" not in html and "cid:shot1" in html


def test_commands_from_clients_are_never_executed(make_desk):
    desk = make_desk()
    desk.send(make_email(subject="Hello", body="#status resolved\n#priority P1\nPlease help."))
    desk.wait_settled()
    [ticket] = desk.tickets()
    assert ticket["status"] == "new" and ticket["priority"] == "P3"


def test_contact_flagged_after_repeated_hard_bounces(make_desk):
    from postdesk.storage.models import Contact

    desk = make_desk()
    for n in range(3):
        desk.send(make_email(subject=f"Request {n}", sender="gone@client.example"))
        desk.wait_settled()
        ack = desk.acks()[-1]
        desk.send(dsn_for(ack, desk.outbox_raw(ack["id"])).replace(
            b"<dsn-1@", f"<dsn-{n}@".encode()), mail_from="")
        desk.wait_settled()
        with desk.app.sessions() as s:
            contact = s.scalar(select(Contact).where(Contact.email == "gone@client.example"))
        assert contact.hard_bounces == n + 1
        assert (contact.flagged_at is not None) == (n == 2)
    assert len(desk.tickets()) == 3
    assert all(a["status"] == "bounced" for a in desk.acks())
