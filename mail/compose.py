"""Turn a rendered email into RFC 5322 bytes with the headers that keep threading and
loop prevention right."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

# Header values built from user input (subjects, names) pass through header_safe: CR/LF
# in them is how header injection works.
from postdesk.mail.html_safety import header_safe
from postdesk.mail.render import RenderedEmail


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


def _address(addr: str, name: str = "") -> Address:
    local, _, domain = addr.partition("@")
    return Address(display_name=header_safe(name), username=local, domain=domain)


def compose(mail: OutgoingEmail) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(mail.from_addr, mail.from_name)
    msg["To"] = [_address(a) for a in mail.to]
    if mail.cc:
        msg["Cc"] = [_address(a) for a in mail.cc]
    if mail.reply_to:
        msg["Reply-To"] = _address(mail.reply_to, mail.from_name)
    msg["Subject"] = header_safe(mail.subject)
    msg["Date"] = format_datetime(mail.date)
    msg["Message-ID"] = mail.message_id
    if mail.in_reply_to:
        msg["In-Reply-To"] = mail.in_reply_to
    refs = [r for r in mail.references if r]
    if mail.in_reply_to and mail.in_reply_to not in refs:
        refs.append(mail.in_reply_to)
    if refs:
        # Keep References bounded: first id plus the most recent ones (RFC 5322 §3.6.4
        # allows trimming; mail clients need the root and the parent).
        if len(refs) > 20:
            refs = refs[:1] + refs[-19:]
        msg["References"] = " ".join(refs)
    if mail.automatic:
        # RFC 3834, and Exchange's own switch: no out-of-office replies to us.
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    for name, value in mail.extra_headers.items():
        msg[name] = header_safe(value)
    msg.set_content(mail.body.text)
    if mail.body.html is not None:
        msg.add_alternative(mail.body.html, subtype="html")
    return msg.as_bytes()
