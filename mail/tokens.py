"""Self-identifying, HMAC-signed tokens: the Message-IDs of the emails we send and the
plus-address reply tokens. A token names its ticket, so a reply maps to the ticket
without a lookup table, and the signature means nobody can forge one for another ticket.
Pure functions: the secret and the nonce are passed in."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

_SIG_LEN = 20  # hex chars = 80 bits: far beyond guessing by email
# ``pd-`` ids go to clients (acknowledgements, relayed replies): they thread a client's
# reply. ``pds-`` ids go only to staff (notifications, pages): answering one is a staff
# token. The purpose is inside the signature, so one cannot be turned into the other.
_MID = re.compile(rf"^<?(pds?)-(\d{{1,18}})-([a-z0-9]+)-([0-9a-f]{{{_SIG_LEN}}})@([^>]+)>?$", re.I)
_REPLY = re.compile(rf"^[^+@]+\+([a-z]+)-(\d{{1,18}})\.([0-9a-f]{{{_SIG_LEN}}})@", re.I)

Purpose = Literal["client", "staff"]
_PREFIX: dict[Purpose, str] = {"client": "pd", "staff": "pds"}


@dataclass(frozen=True)
class MessageIdToken:
    ticket_id: int      # 0: ours, but about no ticket
    purpose: Purpose


def _sign(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()[:_SIG_LEN]


def _mid_payload(purpose: Purpose, tid: int, nonce: str) -> str:
    # Client ids keep the payload they always had, so ids already sent stay valid.
    return f"mid:{tid}:{nonce}" if purpose == "client" else f"mid-staff:{tid}:{nonce}"


def make_message_id(secret: bytes, ticket_id: int | None, nonce: str, domain: str,
                    purpose: Purpose = "client") -> str:
    """``<pd-12-k3j9x-<sig>@desk.example>`` (``pds-`` for staff-facing email); ticket 0
    means "not about a ticket"."""
    tid = ticket_id or 0
    sig = _sign(secret, _mid_payload(purpose, tid, nonce))
    return f"<{_PREFIX[purpose]}-{tid}-{nonce}-{sig}@{domain}>"


def read_message_id(secret: bytes, message_id: str) -> MessageIdToken | None:
    """The ticket and purpose an id of ours names; None if it is not ours or the
    signature fails."""
    match = _MID.match(message_id.strip())
    if not match:
        return None
    purpose: Purpose = "staff" if match.group(1).lower() == "pds" else "client"
    tid, nonce, sig = int(match.group(2)), match.group(3), match.group(4).lower()
    if not hmac.compare_digest(sig, _sign(secret, _mid_payload(purpose, tid, nonce))):
        return None
    return MessageIdToken(tid, purpose)


def ticket_from_message_id(secret: bytes, message_id: str) -> int | None:
    """The ticket an id of ours names (either purpose), or None if it is not ours or the
    signature fails. Returns 0 for our own ids that belong to no ticket."""
    token = read_message_id(secret, message_id)
    return token.ticket_id if token else None


def is_our_message_id(secret: bytes, message_id: str) -> bool:
    return read_message_id(secret, message_id) is not None


def make_reply_address(secret: bytes, support_address: str, prefix: str, ticket_id: int) -> str:
    """``support+pd-12.<sig>@desk.example``: staff replies to it reach the ticket."""
    local, domain = support_address.split("@", 1)
    tag = prefix.lower()
    return f"{local}+{tag}-{ticket_id}.{_sign(secret, f'reply:{tag}:{ticket_id}')}@{domain}"


def ticket_from_reply_address(secret: bytes, address: str) -> int | None:
    match = _REPLY.match(address.strip().lower())
    if not match:
        return None
    tag, tid, sig = match.group(1), int(match.group(2)), match.group(3)
    if not hmac.compare_digest(sig, _sign(secret, f"reply:{tag}:{tid}")):
        return None
    return tid


def base_address(address: str) -> str:
    """``support+anything@desk.example`` -> ``support@desk.example``."""
    local, _, domain = address.strip().lower().partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def thread_root_id(secret: bytes, ticket_id: int, recipient: str, domain: str) -> str:
    """The Message-ID every staff notification about one ticket to one recipient names as
    its parent (``In-Reply-To``/``References``), so their mail client shows the ticket as
    one conversation. Stable (derived from ticket and recipient) and staff-purpose: it is
    only ever shown to that staff member."""
    nonce = "t" + hashlib.sha256(recipient.strip().lower().encode()).hexdigest()[:12]
    return make_message_id(secret, ticket_id, nonce, domain, purpose="staff")
