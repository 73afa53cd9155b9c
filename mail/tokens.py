"""Self-identifying, HMAC-signed tokens: the Message-IDs of the emails we send and the
plus-address reply tokens. A token names its ticket, so a reply maps to the ticket
without a lookup table, and the signature means nobody can forge one for another ticket.
Pure functions: the secret and the nonce are passed in."""

from __future__ import annotations

import hashlib
import hmac
import re

_SIG_LEN = 20  # hex chars = 80 bits: far beyond guessing by email
_MID = re.compile(rf"^<?pd-(\d+)-([a-z0-9]+)-([0-9a-f]{{{_SIG_LEN}}})@([^>]+)>?$", re.I)
_REPLY = re.compile(rf"^[^+@]+\+([a-z]+)-(\d+)\.([0-9a-f]{{{_SIG_LEN}}})@", re.I)


def _sign(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()[:_SIG_LEN]


def make_message_id(secret: bytes, ticket_id: int | None, nonce: str, domain: str) -> str:
    """``<pd-12-k3j9x-<sig>@desk.example>``; ticket 0 means "not about a ticket"."""
    tid = ticket_id or 0
    return f"<pd-{tid}-{nonce}-{_sign(secret, f'mid:{tid}:{nonce}')}@{domain}>"


def ticket_from_message_id(secret: bytes, message_id: str) -> int | None:
    """The ticket an id of ours names, or None if it is not ours or the signature fails.
    Returns 0 for our own ids that belong to no ticket."""
    match = _MID.match(message_id.strip())
    if not match:
        return None
    tid, nonce, sig = int(match.group(1)), match.group(2), match.group(3).lower()
    if not hmac.compare_digest(sig, _sign(secret, f"mid:{tid}:{nonce}")):
        return None
    return tid


def is_our_message_id(secret: bytes, message_id: str) -> bool:
    return ticket_from_message_id(secret, message_id) is not None


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
