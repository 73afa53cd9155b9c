"""Generated mail histories for the IMAP, import and benchmark runs: new tickets, replies
that thread onto them and mail from unknown senders, in a fixed mix, with the outcome the
pipeline should reach for each kind.

Every new ticket has its own sender, so no per-sender limit (auto-reply or flood
protection) can change the counts; each reply comes from the ticket's sender, after it,
with In-Reply-To/References naming the ticket's first message."""

from __future__ import annotations

import mailbox
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

# Of every ten messages: six open tickets, three reply to an earlier ticket, one is from
# a stranger (quarantined as unknown_sender: the test config has no catch-all org).
PATTERN = ("new", "new", "reply", "new", "new", "unknown", "reply", "new", "new", "reply")
START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


@dataclass
class History:
    messages: list[EmailMessage] = field(default_factory=list)
    tickets: int = 0
    replies: int = 0
    unknown: int = 0

    def raws(self) -> list[bytes]:
        return [m.as_bytes() for m in self.messages]


def _email(sender: str, subject: str, body: str, message_id: str, at: datetime,
           parent: EmailMessage | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@desk.example"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(at)
    msg["Message-ID"] = message_id
    if parent is not None:
        msg["In-Reply-To"] = parent["Message-ID"]
        msg["References"] = parent["Message-ID"]
    msg.set_content(body)
    return msg


def history(count: int, tag: str = "h") -> History:
    """``count`` messages in the PATTERN mix; ``tag`` keeps Message-IDs of two histories
    apart."""
    out = History()
    opened: list[EmailMessage] = []
    replied = 0
    for i in range(count):
        kind = PATTERN[i % len(PATTERN)]
        at = START + timedelta(minutes=7 * i)
        mid = f"<{tag}-{i}@gen.example>"
        if kind == "reply" and replied < len(opened):
            parent = opened[replied]
            replied += 1
            msg = _email(parent["From"], f"Re: {parent['Subject']}",
                         f"Any news on this? (follow-up {i})", mid, at, parent)
            out.replies += 1
        elif kind == "unknown":
            msg = _email(f"stranger{i}@elsewhere.example", f"Partnership offer {i}",
                         "We would like to work with you.", mid, at)
            out.unknown += 1
        else:
            msg = _email(f"user{i}@client.example", f"Problem number {i} with the site",
                         f"Page {i} shows an error since this morning.", mid, at)
            opened.append(msg)
            out.tickets += 1
        out.messages.append(msg)
    return out


def write_mbox(path: Path, messages: list[EmailMessage] | list[bytes]) -> Path:
    box = mailbox.mbox(path, create=True)
    box.lock()
    try:
        for msg in messages:
            box.add(msg)
        box.flush()
    finally:
        box.unlock()
        box.close()
    return path
