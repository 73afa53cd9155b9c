"""A staff member's queue request: the subject ``queue`` or ``mine`` (their open
tickets) or ``all`` (the unassigned ones too). Pure."""

from __future__ import annotations

from typing import Literal

QueueKind = Literal["mine", "all"]
_SUBJECTS: dict[str, QueueKind] = {"queue": "mine", "mine": "mine", "all": "all"}


def queue_request(subject: str | None) -> QueueKind | None:
    """Which queue the subject asks for; None when it is not a queue request."""
    return _SUBJECTS.get((subject or "").strip().lower())
