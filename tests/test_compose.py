"""``compose`` writes outgoing email as text: the same headers and bodies, read back by a
mail client (``email`` with ``policy.default``), as ``EmailMessage`` with ``policy.SMTP``
gives for the same email (the reference below), with CRLF line ends, header values on
one line each unless folded, and no way for a value to start a header of its own."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

import pytest

from postdesk.mail.compose import OutgoingAttachment, OutgoingEmail, compose
from postdesk.mail.html_safety import header_safe
from postdesk.mail.render import RenderedEmail

HEADERS = ("From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "In-Reply-To",
           "References", "Auto-Submitted", "X-Auto-Response-Suppress", "Thread-Topic",
           "Thread-Index", "MIME-Version")


def reference(mail: OutgoingEmail) -> bytes:
    """What compose did before (EmailMessage, policy.SMTP): the oracle."""
    def address(addr: str, name: str = "") -> Address:
        local, _, domain = addr.partition("@")
        return Address(display_name=header_safe(name), username=local, domain=domain)

    msg = EmailMessage(policy=SMTP)
    msg["From"] = address(mail.from_addr, mail.from_name)
    msg["To"] = [address(a) for a in mail.to]
    if mail.cc:
        msg["Cc"] = [address(a) for a in mail.cc]
    if mail.reply_to:
        msg["Reply-To"] = address(mail.reply_to, mail.from_name)
    msg["Subject"] = header_safe(mail.subject)
    msg["Date"] = format_datetime(mail.date)
    msg["Message-ID"] = mail.message_id
    if mail.in_reply_to:
        msg["In-Reply-To"] = mail.in_reply_to
    refs = [r for r in mail.references if r]
    if mail.in_reply_to and mail.in_reply_to not in refs:
        refs.append(mail.in_reply_to)
    if refs:
        if len(refs) > 20:
            refs = refs[:1] + refs[-19:]
        msg["References"] = " ".join(refs)
    if mail.automatic:
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    for name, value in mail.extra_headers.items():
        msg[name] = header_safe(value)
    msg.set_content(mail.body.text)
    if mail.body.html is not None:
        msg.add_alternative(mail.body.html, subtype="html")
    return msg.as_bytes()


def outgoing(**changes: Any) -> OutgoingEmail:
    values: dict[str, Any] = dict(
        from_addr="support@desk.example", from_name="Acme Digital Support",
        to=["alice@client.example"], subject="[PD-12] Website contact form broken",
        body=RenderedEmail("Hello Alice,\n\nLogged as PD-12.\n",
                           "<p>Hello Alice,</p>\n<p>Logged as PD-12.</p>\n"),
        message_id="<pd.12.abc@desk.example>", date=datetime(2026, 11, 24, 9, 30, tzinfo=UTC),
        reply_to="support@desk.example", in_reply_to="<orig-1@client.example>",
        references=["<root@client.example>"])
    values.update(changes)
    return OutgoingEmail(**values)


CASES = {
    "plain": {},
    "text only": {"body": RenderedEmail("Just text.\n", None)},
    "cc and staff headers": {
        "cc": ["bob@client.example", "carol@client.example"], "automatic": False,
        "extra_headers": {"Thread-Topic": "Checkout is broken",
                          "Thread-Index": "AdkAAAAAAAAAAAAAAAAAAAAAAAAA"}},
    "unicode subject and name": {"subject": "Ünïcödé — Fehler im Bestellprozess 😀",
                                 "from_name": "Société Générale Support"},
    "name with specials": {"from_name": 'Acme, "Digital" Support (UK)'},
    "long ascii subject": {"subject": " ".join(f"word{i}" for i in range(60))},
    "long unicode subject": {"subject": "Größenänderung " * 20},
    "subject that reads as an encoded word": {"subject": "=?utf-8?q?Hi?= there"},
    "many references": {"references": [f"<ref-{i}@client.example>" for i in range(30)]},
    "in-reply-to already referenced": {"references": ["<orig-1@client.example>"]},
    "no threading": {"in_reply_to": None, "references": [], "reply_to": None},
    "non-ascii body": {"body": RenderedEmail("Grüße aus Köln\n", "<p>Grüße</p>\n")},
    "long lines, latin": {"body": RenderedEmail("Hello " + "x" * 200 + "\nnext\n",
                                                "<p>" + "é " * 300 + "</p>\n")},
    "long lines, cjk": {"body": RenderedEmail("日本語のテキスト" * 40 + "\n",
                                              "<p>" + "日本語" * 100 + "</p>")},
    "CRLF and CR in bodies": {"body": RenderedEmail("a\r\nb\rc\n\n", "<p>a</p>\r\n")},
    "empty text": {"body": RenderedEmail("", None)},
    "trailing spaces on lines": {"body": RenderedEmail("x " * 50 + " \nend \n", None)},
    "quoted local part": {"to": ["a b@client.example"]},
    "internationalised domain": {"to": ["alice@bücher.example"]},
}


def _read(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _content(msg: EmailMessage, kind: str) -> str | None:
    part = msg.get_body((kind,))
    return None if part is None else str(part.get_content()).replace("\r\n", "\n")


@pytest.mark.parametrize("name", list(CASES))
def test_reads_back_as_the_email_package_wrote_it(name: str) -> None:
    mail = outgoing(**CASES[name])
    ours, theirs = _read(compose(mail)), _read(reference(mail))
    for header in HEADERS:
        if name == "subject that reads as an encoded word" and header == "Subject":
            # The text is kept as written; the reference decoded it a second time.
            assert str(ours[header]) == "=?utf-8?q?Hi?= there"
            continue
        if name == "internationalised domain" and header == "To":
            # The reference wrote an encoded word inside the address (unreadable); IDNA
            # is the form every server understands.
            assert str(ours[header]) == "alice@xn--bcher-kva.example"
            continue
        assert str(ours[header]) == str(theirs[header]), header
    assert ours.get_content_type() == theirs.get_content_type()
    assert [p.get_content_type() for p in ours.walk()] == [
        p.get_content_type() for p in theirs.walk()]
    for part_ours, part_theirs in zip(ours.walk(), theirs.walk(), strict=True):
        assert part_ours.get("Content-Transfer-Encoding") == part_theirs.get(
            "Content-Transfer-Encoding")
        assert part_ours.get_content_charset() == part_theirs.get_content_charset()
    assert _content(ours, "plain") == _content(theirs, "plain")
    assert _content(ours, "html") == _content(theirs, "html")
    assert not ours.defects and all(not p.defects for p in ours.walk())


@pytest.mark.parametrize("name", list(CASES))
def test_wire_format(name: str) -> None:
    raw = compose(outgoing(**CASES[name]))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    for line in head.split(b"\r\n"):
        if len(line) > 78:
            # Only a single word that cannot be folded may be longer.
            assert b" " not in line.strip(), line
        assert line.strip(), "no whitespace-only header line"


@pytest.mark.parametrize("field,value", [
    ("subject", "Hi\r\nBcc: victim@else.example"),
    ("subject", "Hi\nBcc: victim@else.example"),
    ("subject", "Hi\u2028Bcc: victim@else.example"),
    ("from_name", "Eve\r\nBcc: victim@else.example"),
    ("in_reply_to", "<x@y>\r\nBcc: victim@else.example"),
    ("references", ["<x@y>\r\nBcc: victim@else.example"]),
    ("extra_headers", {"Thread-Topic": "t\r\nBcc: victim@else.example"}),
])
def test_no_header_injection(field: str, value: Any) -> None:
    raw = compose(outgoing(**{field: value}))
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"\nBcc:" not in head
    assert _read(raw)["Bcc"] is None


@pytest.mark.parametrize("to", ["alice@client.example\r\nBcc: x@y.example",
                                "a@b>, c@d.example"])
def test_an_address_that_cannot_be_written_safely_is_refused(to: str) -> None:
    with pytest.raises(ValueError):
        compose(outgoing(to=[to]))


def test_junk_message_ids_are_left_out_of_threading_headers() -> None:
    huge = "<" + "x" * 1000 + "@client.example>"
    msg = _read(compose(outgoing(in_reply_to=huge, references=[huge, "<ok@client.example>"])))
    assert msg["In-Reply-To"] is None
    assert str(msg["References"]) == "<ok@client.example>"


def test_boundary_never_occurs_in_a_part() -> None:
    raw = compose(outgoing())
    msg = _read(raw)
    boundary = msg.get_boundary()
    assert boundary is not None and raw.count(f"--{boundary}".encode()) == 3


# --- attachments ------------------------------------------------------------------------

def test_attachments_go_out_byte_identical_with_inline_images_beside_the_html() -> None:
    pdf, png = bytes(range(256)) * 400, b"\x89PNG" + bytes(5000)
    raw = compose(OutgoingEmail(
        from_addr="support@desk.example", from_name="Desk", to=["a@client.example"],
        subject="Files", body=RenderedEmail("see files", '<p><img src="cid:i1@x"></p>'),
        message_id="<m@desk.example>", date=datetime(2026, 11, 23, tzinfo=UTC),
        attachments=[OutgoingAttachment("facture é.pdf", "application/pdf", pdf),
                     OutgoingAttachment("i.png", "image/png", png, "i1@x", inline=True)]))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "multipart/related",
        "text/html", "image/png", "application/pdf"]
    [attached] = list(msg.iter_attachments())
    assert attached.get_filename() == "facture é.pdf" and attached.get_content() == pdf
    [image] = [p for p in msg.walk() if p["Content-ID"] == "<i1@x>"]
    assert image.get_content() == png
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_an_inline_image_without_html_is_sent_as_a_plain_attachment() -> None:
    raw = compose(OutgoingEmail(
        from_addr="support@desk.example", from_name="Desk", to=["a@client.example"],
        subject="Files", body=RenderedEmail("text only", None), message_id="<m@d.example>",
        date=datetime(2026, 11, 23, tzinfo=UTC),
        attachments=[OutgoingAttachment("i.png", "image/png", b"PNG", "i1@x", inline=True)]))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed", "text/plain", "image/png"]
