"""A composed email with files attached (the statement's CSV): multipart/mixed around the
text + HTML alternative, each file base64 with its name, bytes unchanged."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy

from postdesk.mail.compose import OutgoingAttachment, OutgoingEmail, compose
from postdesk.mail.render import RenderedEmail


def outgoing(*files: OutgoingAttachment) -> bytes:
    return compose(OutgoingEmail(
        from_addr="support@desk.example", from_name="Desk", to=["a@client.example"],
        subject="Statement", body=RenderedEmail("text part\n", "<p>html part</p>"),
        message_id="<x@desk.example>", date=datetime(2026, 12, 1, 8, tzinfo=UTC),
        attachments=files))


def test_a_csv_rides_along_byte_identical_next_to_both_parts() -> None:
    data = b"ticket,minutes\nPD-1,90\n" + "caf\u00e9,1\n".encode()
    msg = email.message_from_bytes(outgoing(OutgoingAttachment("s.csv", "text/csv", data)),
                                   policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    assert msg.get_body(("plain",)).get_content().strip() == "text part"
    assert msg.get_body(("html",)).get_content().strip() == "<p>html part</p>"
    [part] = list(msg.iter_attachments())
    assert part.get_filename() == "s.csv" and part.get_content_type() == "text/csv"
    assert part.get_payload(decode=True) == data


def test_a_name_that_could_break_the_header_is_made_safe() -> None:
    raw = outgoing(OutgoingAttachment('bad"\r\nX-Evil: 1\u00e9.csv', "text/csv", b"x"))
    assert b"\r\nX-Evil:" not in raw
    msg = email.message_from_bytes(raw, policy=policy.default)
    [part] = list(msg.iter_attachments())
    # The name is kept (RFC 2231), with the line break that would have split the header
    # taken out.
    name = part.get_filename()
    assert "\r" not in name and "\n" not in name and name.endswith("1\u00e9.csv")


def test_no_files_keeps_the_plain_alternative() -> None:
    assert b"multipart/mixed" not in outgoing()
