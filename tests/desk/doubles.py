"""Test doubles shared by the unit tier's modules."""

from __future__ import annotations


class RecordedDispatch:
    """A ``Dispatch`` that keeps the outbox ids it is handed, in order (the drafts are
    real rows; nothing is sent). The desk services tested with it never enqueue inbound
    mail: that fails the test."""

    def __init__(self) -> None:
        self.outbox_ids: list[int] = []

    def inbound(self, raw_id: int) -> None:
        raise AssertionError(f"raw message {raw_id} enqueued: no inbound work expected")

    def outbox(self, *outbox_ids: int) -> None:
        self.outbox_ids.extend(outbox_ids)
