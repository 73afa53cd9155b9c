"""Outlook's ``Thread-Index`` header, so Outlook groups a ticket's emails."""

from __future__ import annotations

import base64
import hashlib
import struct
from datetime import datetime


def outlook_thread_index(ticket_key: str, at: datetime, replies: int) -> str:
    """A 22-byte header block (FILETIME + GUID) that is the same for every email of a
    ticket, plus a 5-byte child block per reply (MS-OXOMSG 2.2.1.3)."""
    guid = hashlib.sha256(ticket_key.encode()).digest()[:16]
    filetime = int((at.timestamp() + 11644473600) * 10_000_000)
    header = struct.pack(">Q", filetime)[:6] + guid
    children = b"".join(struct.pack(">IB", (i + 1) << 8, 0)[:5] for i in range(replies))
    return base64.b64encode(header + children).decode()
