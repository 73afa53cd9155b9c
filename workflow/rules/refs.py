"""Ticket references as people see them: ``PD-12``, the ``[PD-12]`` subject token, and the
subject a ticket keeps. Pure string rules."""

from __future__ import annotations

import re


def ticket_ref(prefix: str, ticket_id: int) -> str:
    return f"{prefix}-{ticket_id}"


def subject_token_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"\[{re.escape(prefix)}-(\d{{1,18}})\]", re.IGNORECASE)


def parse_ref(prefix: str, ref: str) -> int | None:
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)", ref.strip(), re.IGNORECASE)
    return int(match.group(1)) if match else None


_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|vs|antw|tr|ref)\s*(\[\d+\])?\s*:\s*)+",
                           re.IGNORECASE)

# Subjects copied into outgoing mail are bounded (a client can send any length).
MAX_SUBJECT = 250


def clean_subject(subject: str, prefix: str) -> str:
    """The subject a ticket keeps: without reply prefixes or our own token."""
    subject = subject_token_re(prefix).sub("", subject or "")
    subject = _REPLY_PREFIX.sub("", subject.strip())
    return " ".join(subject.split()) or "(no subject)"


def ack_subject(prefix: str, ticket_id: int, subject: str) -> str:
    return f"[{ticket_ref(prefix, ticket_id)}] {subject}"[:MAX_SUBJECT]
