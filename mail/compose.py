"""Turn a rendered email into RFC 5322 bytes with the headers that keep threading and
loop prevention right.

Built as text, directly: every header is a plain string made safe by ``_header`` (one
place: ``header_safe`` removes line breaks and controls, non-ASCII becomes RFC 2047
encoded words, long values fold at spaces), the body is ``text/plain`` or
``multipart/alternative`` (text + HTML) in UTF-8, CRLF throughout. This is what
``email.message.EmailMessage`` with ``policy.SMTP`` produced, at a tenth of the cost: the
policy parses every header value back into a tree and refolds it.

With attachments the body is ``multipart/mixed``: the text/HTML alternative first (its
HTML in a ``multipart/related`` with the inline images its ``cid:`` links name), then
each attachment. Attachment parts are rare and are built by ``email``'s own MIMEPart,
which knows RFC 2231 file names and base64 line lengths."""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.header import Header
from email.message import MIMEPart
from email.policy import SMTP
from email.utils import format_datetime, formataddr

# Header values built from user input (subjects, names) pass through header_safe: CR/LF
# in them is how header injection works.
from postdesk.mail.html_safety import header_safe
from postdesk.mail.render import RenderedEmail

CRLF = "\r\n"
MAX_LINE = 78            # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
# A message id longer than this is junk (real ones are < 100), and would not fit on one
# header line of at most 998 characters: it is left out of In-Reply-To and References.
MAX_ID = 900
# RFC 5322 §3.2.3: an unquoted local part is a dot-atom.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|\[[\x21-\x5a\x5e-\x7e]*\]")


@dataclass(frozen=True)
class OutgoingAttachment:
    """A file to send as it was received: ``data`` goes out byte for byte (base64).
    ``inline`` with a ``content_id``: an image the HTML shows through ``cid:``."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True)
class OutgoingEmail:
    from_addr: str
    from_name: str
    to: Sequence[str]
    subject: str
    body: RenderedEmail
    message_id: str
    date: datetime
    cc: Sequence[str] = ()
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    automatic: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict)
    attachments: Sequence[OutgoingAttachment] = ()


def compose(mail: OutgoingEmail) -> bytes:
    lines = [
        _fold("From:", _mailbox(mail.from_addr, mail.from_name).split(" "), " "),
        _address_list("To", mail.to),
    ]
    if mail.cc:
        lines.append(_address_list("Cc", mail.cc))
    if mail.reply_to:
        lines.append(_fold("Reply-To:", _mailbox(mail.reply_to, mail.from_name).split(" "),
                           " "))
    lines.append(_header("Subject", mail.subject))
    lines.append(f"Date: {format_datetime(mail.date)}")
    lines.append(_header("Message-ID", mail.message_id))
    in_reply_to = header_safe(mail.in_reply_to or "")
    if len(in_reply_to) > MAX_ID:
        in_reply_to = ""
    if in_reply_to:
        lines.append(_header("In-Reply-To", in_reply_to))
    refs = [r for r in (header_safe(r) for r in mail.references) if r and len(r) <= MAX_ID]
    if in_reply_to and in_reply_to not in refs:
        refs.append(in_reply_to)
    if refs:
        # Keep References bounded: first id plus the most recent ones (RFC 5322 §3.6.4
        # allows trimming; mail clients need the root and the parent).
        if len(refs) > 20:
            refs = refs[:1] + refs[-19:]
        lines.append(_header("References", " ".join(refs)))
    if mail.automatic:
        # RFC 3834, and Exchange's own switch: no out-of-office replies to us.
        lines.append("Auto-Submitted: auto-replied")
        lines.append("X-Auto-Response-Suppress: All")
    for name, value in mail.extra_headers.items():
        lines.append(_header(_field_name(name), value))
    lines.append("MIME-Version: 1.0")
    if mail.attachments:
        return _with_attachments(lines, mail)
    text_cte, text = _body(mail.body.text)
    if mail.body.html is None:
        lines.append('Content-Type: text/plain; charset="utf-8"')
        lines.append(f"Content-Transfer-Encoding: {text_cte}")
        return (CRLF.join(lines) + CRLF + CRLF).encode("ascii") + text
    html_cte, html = _body(mail.body.html)
    boundary = _boundary(text, html)
    lines.append(f'Content-Type: multipart/alternative;{CRLF} boundary="{boundary}"')
    head = (CRLF.join(lines) + CRLF + CRLF).encode("ascii")
    delimiter = f"--{boundary}".encode("ascii")
    return b"".join([
        head,
        delimiter, b'\r\nContent-Type: text/plain; charset="utf-8"\r\n',
        b"Content-Transfer-Encoding: ", text_cte.encode("ascii"), b"\r\n\r\n", text,
        b"\r\n", delimiter, b'\r\nContent-Type: text/html; charset="utf-8"\r\n',
        b"Content-Transfer-Encoding: ", html_cte.encode("ascii"), b"\r\n\r\n", html,
        b"\r\n", delimiter, b"--\r\n"])


def _with_attachments(lines: list[str], mail: OutgoingEmail) -> bytes:
    inline = [a for a in mail.attachments if a.inline and a.content_id and mail.body.html]
    files = [a for a in mail.attachments if a not in inline]
    text_cte, text = _body(mail.body.text)
    text_part = _part(['Content-Type: text/plain; charset="utf-8"',
                       f"Content-Transfer-Encoding: {text_cte}"], text)
    if mail.body.html is None:
        body = text_part
    else:
        html_cte, html = _body(mail.body.html)
        html_part = _part(['Content-Type: text/html; charset="utf-8"',
                           f"Content-Transfer-Encoding: {html_cte}"], html)
        if inline:
            html_part = _multipart("related", [html_part, *map(_attachment_part, inline)],
                                   extra='; type="text/html"')
        body = _multipart("alternative", [text_part, html_part])
    whole = _multipart("mixed", [body, *map(_attachment_part, files)])
    return (CRLF.join(lines) + CRLF).encode("ascii") + whole


def _part(headers: list[str], body: bytes) -> bytes:
    return (CRLF.join(headers) + CRLF + CRLF).encode("ascii") + body


def _multipart(subtype: str, parts: list[bytes], extra: str = "") -> bytes:
    boundary = _boundary(*parts)
    delimiter = f"--{boundary}\r\n".encode("ascii")
    out = [f'Content-Type: multipart/{subtype};{CRLF} boundary="{boundary}"{extra}'
           f"{CRLF}{CRLF}".encode("ascii")]
    for part in parts:
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1): without
        # this one a part would lose its own last line break.
        out += [delimiter, part, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)


def _attachment_part(attachment: OutgoingAttachment) -> bytes:
    maintype, _, subtype = attachment.content_type.lower().partition("/")
    if maintype in ("multipart", "message", "") or not subtype:
        # Sent as the bytes they are: a forwarded message or an odd type as a plain file.
        maintype, subtype = "application", "octet-stream"
    part = MIMEPart(policy=SMTP)
    part.set_content(attachment.data, maintype=maintype, subtype=subtype,
                     disposition="inline" if attachment.inline else "attachment",
                     filename=header_safe(attachment.filename) or "attachment",
                     cid=f"<{header_safe(attachment.content_id)}>"
                     if attachment.content_id else None)
    return part.as_bytes(policy=SMTP)


# --- headers ----------------------------------------------------------------------------

def _header(name: str, value: str) -> str:
    """``Name: value`` as one (folded) header field, whatever ``value`` holds: line
    breaks and controls removed (``header_safe``), non-ASCII text — or text that would
    read as an encoded word — encoded per RFC 2047, long lines folded at spaces."""
    value = header_safe(value)
    if not value.isascii() or "=?" in value:
        return f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep=CRLF)
    return _fold(f"{name}:", value.split(" "), " ")


def _fold(start: str, words: Sequence[str], sep: str) -> str:
    """``start`` followed by ``words`` joined with ``sep``, a line break inserted before
    the space of a separator wherever a line would pass 78 characters (a single longer
    word stays whole; RFC 5322's hard limit is 998)."""
    out: list[str] = []
    line = start
    for i, word in enumerate(words):
        piece = (" " if i == 0 else sep) + word
        if word and len(line) + len(piece) > MAX_LINE and line.strip() and i > 0:
            # Fold at the space that starts ``sep`` (" " or ", " -> "," ends the line).
            head, _, rest = piece.rpartition(" ")
            out.append(line + head)
            line = " " + rest
        else:
            line += piece
    out.append(line)
    return CRLF.join(out)


def _field_name(name: str) -> str:
    if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
        raise ValueError(f"invalid header name {name!r}")
    return name


def _addr_spec(addr: str) -> str:
    """``local@domain`` as it may appear in a header: ASCII (an internationalised domain
    as IDNA), the local part quoted when it is not a dot-atom. An address that cannot be
    written safely is refused (the draft is marked failed, never sent half-right)."""
    if any(c in addr for c in "\r\n\x00"):
        raise ValueError(f"invalid address {addr!r}: line break in an address")
    local, _, domain = addr.partition("@")
    if not _DOT_ATOM.fullmatch(local):
        if not local.isascii():
            # No way to write it without SMTPUTF8; an encoded word is what was done before.
            local = Header(local, "utf-8").encode()
        else:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"invalid address {addr!r}: domain cannot be encoded") from None
    if domain and not _DOMAIN.fullmatch(domain):
        raise ValueError(f"invalid address {addr!r}: not a domain")
    return f"{local}@{domain}" if domain else local


def _mailbox(addr: str, name: str = "") -> str:
    """``Name <local@domain>``, ASCII: formataddr quotes a display name with specials and
    encodes a non-ASCII one as one encoded word."""
    return formataddr((header_safe(name), _addr_spec(addr)), "utf-8")


def _address_list(name: str, addrs: Sequence[str]) -> str:
    return _fold(f"{name}:", [_addr_spec(a) for a in addrs], ", ")


# --- body -------------------------------------------------------------------------------

def _body(text: str) -> tuple[str, bytes]:
    """UTF-8 body with CRLF line ends and the transfer encoding ``email.contentmanager``
    would pick: 7bit for short ASCII lines, 8bit for short lines otherwise, and for
    lines over 78 characters quoted-printable, or base64 when that is shorter."""
    lines = text.encode("utf-8").splitlines()
    body = b"\r\n".join(lines) + b"\r\n"
    if max(map(len, lines), default=0) <= MAX_LINE:
        return ("7bit" if body.isascii() else "8bit"), body
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    if len(binascii.b2a_qp(sniff, istext=True)) > len(binascii.b2a_base64(sniff)):
        encoded = binascii.b2a_base64(body, newline=False)
        return "base64", b"\r\n".join(encoded[i:i + 76]
                                      for i in range(0, len(encoded), 76)) + b"\r\n"
    return "quoted-printable", binascii.b2a_qp(body, istext=True)


def _boundary(*parts: bytes) -> str:
    while True:
        boundary = f"=_pd_{secrets.token_hex(12)}"
        marker = boundary.encode("ascii")
        if not any(marker in part for part in parts):
            return boundary
