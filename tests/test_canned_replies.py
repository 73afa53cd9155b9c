"""``#reply NAME`` over real SMTP: the canned reply (org override, then desk, then
built-in) goes to the client above the staff member's own text; an unknown name is a
command error and nothing is sent; an override is sandboxed like every template."""

from __future__ import annotations

import email
from email import policy

import pytest

from postdesk.mail.render import check_overrides
from tests.mailshapes import reply
from tests.support import make_email

pytestmark = pytest.mark.backends("sqlite")


def open_ticket(desk):
    desk.send(make_email(sender="alice@client.example", subject="Checkout is broken",
                         body="Checkout is broken."))
    desk.wait_settled()
    return desk.outbox(template="staff_notification")[-1]


def staff_reply(desk, note, text, client="outlook"):
    desk.send(reply(client, sender="dev1@agency.example", subject=f"Re: {note['subject']}",
                    text=text, quoted="Checkout is broken.", in_reply_to=note["message_id"]),
              mail_from="dev1@agency.example")
    desk.wait_settled()


def client_text(desk) -> str:
    [row] = desk.outbox(template="staff_reply")
    assert row["to"] == ["alice@client.example"]
    msg = email.message_from_bytes(desk.outbox_raw(row["id"]), policy=policy.default)
    return msg.get_body(("plain",)).get_content().replace("\r\n", "\n")


def write_override(desk, path: str, text: str) -> None:
    target = desk.config.data_path / "templates" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def test_a_builtin_canned_reply_goes_above_the_staff_members_own_text(make_desk):
    desk = make_desk()
    note = open_ticket(desk)
    staff_reply(desk, note, "#reply received\nI will call you at 3pm.")
    text = client_text(desk)
    assert text.startswith('Thank you for your message about "Checkout is broken".')
    assert text.index("update you on PD-1") < text.index("I will call you at 3pm.")
    assert "#reply" not in text and "Original Message" not in text
    assert desk.outbox(template="command_errors") == []


def test_the_desks_canned_reply_and_then_the_orgs_override_win(make_desk):
    desk = make_desk()
    write_override(desk, "replies/received.txt", "Desk version for {{ ref }}.")
    write_override(desk, "replies/hello.txt", "Hello {{ requester }}, {{ staff_name }} here.")
    note = open_ticket(desk)
    staff_reply(desk, note, "#reply hello\n#reply received")
    text = client_text(desk)
    assert text.startswith("Hello alice@client.example, Dev One here.\n\nDesk version for PD-1.")

    write_override(desk, "orgs/clientco/replies/received.txt", "Client Co version.")
    desk.send(make_email(sender="alice@client.example", subject="Second problem"))
    desk.wait_settled()
    staff_reply(desk, desk.outbox(template="staff_notification")[-1], "#reply received")
    rows = desk.outbox(template="staff_reply")
    second = email.message_from_bytes(desk.outbox_raw(rows[-1]["id"]), policy=policy.default)
    assert second.get_body(("plain",)).get_content().startswith("Client Co version.")


def test_an_unknown_canned_reply_is_a_command_error_and_nothing_reaches_the_client(make_desk):
    desk = make_desk()
    note = open_ticket(desk)
    staff_reply(desk, note, "#reply no-such-reply\nHi there.", client="gmail")
    assert desk.outbox(template="staff_reply") == []
    [errors] = desk.outbox(template="command_errors")
    assert errors["to"] == ["dev1@agency.example"]
    body = email.message_from_bytes(desk.outbox_raw(errors["id"]), policy=policy.default
                                    ).get_body(("plain",)).get_content()
    assert "no canned reply named 'no-such-reply'" in body


def test_a_canned_reply_override_cannot_escape_the_sandbox(make_desk):
    desk = make_desk()
    write_override(desk, "replies/received.txt",
                   "{{ ticket.__class__.__mro__[1].__subclasses__() }}")
    note = open_ticket(desk)
    staff_reply(desk, note, "#reply received", client="apple")
    text = client_text(desk)
    assert "subclasses" not in text and "class" not in text
    assert text.startswith('Thank you for your message')     # the built-in, as fallback


def test_config_check_finds_mistakes_in_canned_reply_overrides(tmp_path):
    replies = tmp_path / "replies"
    replies.mkdir()
    (replies / "hello.txt").write_text("Hi {{ requester }}, {{ staff_name }} on {{ ref }}.")
    (replies / "bad.txt").write_text("{{ secret_sauce }} {{ ticket.__class__ }}")
    problems = check_overrides(tmp_path)
    assert not any("hello.txt" in p for p in problems)
    assert any("bad.txt" in p and "unknown variable 'secret_sauce'" in p for p in problems)
    assert any("bad.txt" in p and "sandbox violation" in p for p in problems)
