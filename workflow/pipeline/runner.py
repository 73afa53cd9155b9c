"""A pipeline of small named steps, as GNU Mailman's handlers: each step does one job on
a shared context. A step ends the pipeline by raising a named outcome; it never returns
half-done. The runner records which step ended it; ``process`` reacts to the outcome."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

Ctx = TypeVar("Ctx")


class Outcome(Exception):  # noqa: N818 - outcomes are results, not errors
    status = "processed"

    def __init__(self, reason: str, detail: str = "", data: Any = None):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.data = data          # what the runner's reaction to this outcome needs
        self.step: str | None = None


class Quarantine(Outcome):
    """Kept, not ticket content, with a reason an operator can act on."""

    status = "quarantined"


class Duplicate(Outcome):
    """Already processed under another raw message (same Message-ID)."""

    status = "duplicate"


class Handled(Outcome):
    """Fully dealt with, no (further) ticket content needed (e.g. a balance request)."""

    status = "processed"


@dataclass(frozen=True)
class Step(Generic[Ctx]):
    name: str
    run: Callable[[Ctx], None]


def step(fn: Callable[[Ctx], None]) -> Step[Ctx]:
    return Step(fn.__name__, fn)


@dataclass(frozen=True)
class PipelineResult:
    status: str
    reason: str | None
    detail: str
    ended_at: str | None   # the step that raised the outcome, None when all ran
    ticket_id: int | None = None   # the ticket the email landed on
    created_ticket: bool = False   # True when this email opened that ticket
    outbox_ids: tuple[int, ...] = ()   # emails rendered and ready to send, after commit
    # The raw message as processed, for the per-email log line and latency metric (so
    # that nobody reads the row again after the transaction).
    source: str | None = None
    message_id: str | None = None
    sender: str | None = None
    received_at: datetime | None = None


def run_steps(steps: Sequence[Step[Ctx]], ctx: Ctx) -> Outcome | None:
    """Run the steps in order; the outcome that ended them (with ``.step`` set), or None
    when every step ran."""
    for s in steps:
        try:
            s.run(ctx)
        except Outcome as outcome:
            outcome.step = s.name
            return outcome
    return None


def run_pipeline(steps: Sequence[Step[Ctx]], ctx: Ctx) -> PipelineResult:
    outcome = run_steps(steps, ctx)
    if outcome is None:
        return PipelineResult("processed", None, "", None)
    return PipelineResult(outcome.status, outcome.reason, outcome.detail, outcome.step)
