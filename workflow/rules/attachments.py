"""Which of an email's attachments travel with the email we send about it. Pure.

Two rules, one limit (``desk.notify_attachment_bytes``):

* a staff notification carries the client's files, in order, while their total stays
  within the limit; the rest are only listed (name and size: they are on the ticket);
* a staff reply reaches the client with every file or not at all: a file that was not
  kept, or files over the limit in total, refuse the relay (nothing half-sent)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FileFacts:
    """What the rules need to know about one stored attachment."""

    key: int                 # the caller's handle (an attachment row id, an index)
    filename: str
    size: int
    kept: bool               # stored in the blob store (False: over max_attachment_bytes)


@dataclass(frozen=True)
class NotificationFiles:
    attach: tuple[FileFacts, ...]
    listed: tuple[FileFacts, ...]     # not attached: named with their sizes


def files_for_notification(files: Sequence[FileFacts], limit: int) -> NotificationFiles:
    attach: list[FileFacts] = []
    listed: list[FileFacts] = []
    total = 0
    for item in files:
        if item.kept and total + item.size <= limit:
            attach.append(item)
            total += item.size
        else:
            listed.append(item)
    return NotificationFiles(tuple(attach), tuple(listed))


def relay_refusals(files: Sequence[FileFacts], limit: int) -> list[str]:
    """Why a staff reply's files cannot go to the client (empty: they all can)."""
    problems = [f"{f.filename} ({human_size(f.size)}) is over the desk's attachment size "
                "limit and was not kept" for f in files if not f.kept]
    total = sum(f.size for f in files)
    if not problems and total > limit:
        problems.append(f"the attachments total {human_size(total)}; at most "
                        f"{human_size(limit)} can be sent to a client")
    return problems


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"
