"""mail.parse on large messages: base64 runs are left out of the stdlib parse and decoded
straight from the raw bytes, with exactly the result of parsing everything, in bounded
memory; attachments over a given limit are not decoded at all."""

from __future__ import annotations

import base64
import email
import email.errors
import email.message
import email.policy
import os
import tracemalloc
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from postdesk.mail import parse as parse_module
from postdesk.mail.parse import ParsedEmail, parse_email
from tests.corpus import manifest_files, read, requires_corpus

FIXTURES = Path(__file__).parent / "fixtures" / "mail"


def summary(parsed: ParsedEmail) -> dict[str, Any]:
    """Everything a ParsedEmail says, and the message tree written out again."""
    fields = {name: getattr(parsed, name) for name in (
        "message_id", "in_reply_to", "references", "from_name", "from_addr", "reply_to",
        "to", "cc", "subject", "date", "text", "html", "headers", "defects")}
    fields["attachments"] = [
        (a.filename, a.content_type, a.payload, a.content_id, a.inline, a.is_rfc822,
         a.is_tnef, a.size, a.too_large) for a in parsed.attachments]
    try:
        fields["tree"] = parsed.message.as_bytes()
    except Exception as exc:  # noqa: BLE001 - then both parses must fail alike
        fields["tree"] = type(exc).__name__
    return fields


def parse_both(raw: bytes, monkeypatch: pytest.MonkeyPatch, min_run: int = 1,
               **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary of the plain parse, summary of the parse with every run of base64 lines
    of at least ``min_run`` bytes left out)."""
    with monkeypatch.context() as patch:
        patch.setattr(parse_module, "_HOLLOW_MESSAGE_BYTES", 1 << 62)
        plain = summary(parse_email(raw, **kwargs))
    with monkeypatch.context() as patch:
        patch.setattr(parse_module, "_HOLLOW_MESSAGE_BYTES", 0)
        patch.setattr(parse_module, "_HOLLOW_RUN_BYTES", min_run)
        hollow = summary(parse_email(raw, **kwargs))
    return plain, hollow


def big_email(attachment: bytes, *, text: str = "Please see the attached log.\n",
              filename: str = "dump.bin") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Client <alice@client.example>"
    msg["To"] = "support@desk.example"
    msg["Subject"] = "Big attachment"
    msg["Message-ID"] = "<big-1@client.example>"
    msg.set_content(text)
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream",
                       filename=filename)
    return msg.as_bytes()


def hollow_parts(message: email.message.Message) -> list[email.message.Message]:
    found = []
    stack = [message]
    while stack:
        part = stack.pop()
        if isinstance(part, parse_module._HollowPart):
            found.append(part)
        payload = part.__dict__.get("_payload")
        if isinstance(payload, list):
            stack.extend(payload)
    return found


# --- same result as the whole parse -------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.eml")))
def test_fixtures_parse_the_same_with_every_base64_run_left_out(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # min_run=1: every run of lines made of base64 characters only ("Thanks", "AAAA")
    # becomes a token, a far harsher test of the parser's view of the tokens than the
    # 64 KiB runs of real use.
    plain, hollow = parse_both((FIXTURES / name).read_bytes(), monkeypatch)
    assert hollow == plain


@requires_corpus
def test_corpus_parses_the_same_with_every_base64_run_left_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    differ = []
    for relative in manifest_files():
        raw = read(relative)
        try:
            plain, hollow = parse_both(raw, monkeypatch)
        except parse_module.UnparseableEmail:
            continue
        if hollow != plain:
            differ.append(relative)
    assert differ == []


def test_large_attachment_is_decoded_from_the_raw_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)   # not a multiple of 3: padding at the end
    raw = big_email(payload)
    parsed = parse_email(raw)
    [part] = hollow_parts(parsed.message)
    assert part.get_filename() == "dump.bin"
    [attachment] = parsed.attachments
    assert attachment.payload == payload and attachment.size == len(payload)
    assert hollow_parts(parsed.message) == [part]   # decoding did not build the text
    plain, hollow = parse_both(raw, monkeypatch, min_run=64 << 10)
    assert hollow == plain


def test_text_of_a_left_out_part_is_exact_when_asked_for() -> None:
    payload = os.urandom(2 * 1024 * 1024)
    raw = big_email(payload)
    parsed = parse_email(raw)
    [part] = hollow_parts(parsed.message)
    text = part.get_payload()
    assert isinstance(text, str)
    assert base64.b64decode(text) == payload
    assert type(part) is email.message.Message      # the text is kept from now on
    assert parsed.message.as_bytes() == email.message_from_bytes(raw).as_bytes()


def test_large_base64_in_a_plain_text_part_stays_text(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = base64.encodebytes(os.urandom(1536 * 1024)).decode()
    raw = big_email(b"x", text=f"Here is the key:\n{blob}\nThanks\n")
    parsed = parse_email(raw)
    assert blob.replace("\n", "") in parsed.text.replace("\n", "")
    plain, hollow = parse_both(raw, monkeypatch, min_run=64 << 10)
    assert hollow == plain


def test_forwarded_message_with_a_large_attachment_is_kept_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    inner = big_email(os.urandom(1536 * 1024), filename="inner.bin")
    outer = EmailMessage()
    outer["From"] = "Alice Client <alice@client.example>"
    outer["To"] = "support@desk.example"
    outer["Subject"] = "Fwd: Big attachment"
    outer.set_content("See below.\n")
    outer.add_attachment(email.message_from_bytes(inner, policy=email.policy.default))
    raw = outer.as_bytes()
    parsed = parse_email(raw)
    [forward] = parsed.attachments
    assert forward.is_rfc822
    assert email.message_from_bytes(forward.payload).get_payload(1).get_payload(
        decode=True) == email.message_from_bytes(inner).get_payload(1).get_payload(decode=True)
    plain, hollow = parse_both(raw, monkeypatch, min_run=64 << 10)
    assert hollow == plain


@pytest.mark.parametrize("tail", [b"QUJD\n", b"QUI=\n", b"QQ==\n", b"QUJ\n", b"Q\n",
                                  b"QU*JD\n", b"====\n", b"\n\n", b""])
def test_odd_ends_after_a_left_out_run_decode_as_the_stdlib_does(
        tail: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = base64.encodebytes(os.urandom(57 * 2000))   # whole 76-character lines
    raw = (b"From: a@client.example\nTo: support@desk.example\nSubject: odd\n"
           b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n--XX\n"
           b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
           b"Content-Disposition: attachment; filename=a.bin\n\n"
           + lines + tail + b"--XX--\n")
    plain, hollow = parse_both(raw, monkeypatch, min_run=64 << 10)
    assert hollow == plain
    stdlib_part = email.message_from_bytes(raw).get_payload(0)
    expected = stdlib_part.get_payload(decode=True)
    if any(isinstance(d, email.errors.InvalidBase64LengthDefect) for d in stdlib_part.defects):
        # The stdlib hands back the text; parse decodes what is decodable (a lone
        # last character holds no whole byte).
        expected = base64.b64decode(b"".join((lines + tail).split())[:-1])
    assert hollow["attachments"][0][2] == expected


def test_run_that_is_not_whole_quads_is_parsed_normally(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = base64.encodebytes(os.urandom(57 * 2000)).replace(b"\n", b"A\n", 1)
    raw = (b"From: a@client.example\nSubject: odd\nContent-Type: application/pdf\n"
           b"Content-Transfer-Encoding: base64\nContent-Disposition: attachment\n\n" + lines)
    plain, hollow = parse_both(raw, monkeypatch, min_run=64 << 10)
    assert hollow == plain


# --- bounded memory and the attachment limit -----------------------------------------------

def test_parsing_a_large_attachment_holds_about_one_decoded_copy() -> None:
    size = 8 * 1024 * 1024
    raw = big_email(os.urandom(size))
    tracemalloc.start()
    try:
        parsed = parse_email(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.attachments[0].size == size
    # The decoded attachment is the only large allocation (the raw bytes were there before).
    assert peak < size * 1.25, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"


@pytest.mark.parametrize("threshold", ["hollow", "plain"])
def test_attachment_over_the_limit_is_not_decoded(threshold: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    if threshold == "plain":
        monkeypatch.setattr(parse_module, "_HOLLOW_MESSAGE_BYTES", 1 << 62)
    raw = big_email(payload)
    [over] = parse_email(raw, max_attachment_bytes=1024 * 1024).attachments
    assert over.too_large and over.payload == b""
    assert over.size == len(payload) if threshold == "hollow" else over.size <= len(payload)
    assert over.filename == "dump.bin"
    [kept] = parse_email(raw, max_attachment_bytes=len(payload)).attachments
    assert not kept.too_large and kept.payload == payload and kept.size == len(payload)
