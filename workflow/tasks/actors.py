"""Dramatiq actors. Thin: each opens its own transaction(s) through the function it
calls, which is idempotent, so a redelivered or retried message changes nothing.

Actors are declared per App on that App's broker (not at import time on a global
broker), so one process can hold several isolated apps — the tests rely on that."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dramatiq

from postdesk.outbound.sender import send_outbox
from postdesk.workflow.pipeline.process import process_inbound

if TYPE_CHECKING:
    from postdesk.app import App

# Retries back off exponentially from 1 s to 10 min; a message is given up after ~2 days
# of failures (the sweeper still finds the raw message / outbox row afterwards).
RETRY_OPTIONS: dict[str, Any] = {"max_retries": 30, "min_backoff": 1_000,
                                 "max_backoff": 600_000}


@dataclass(frozen=True)
class Actors:
    process_inbound: dramatiq.Actor[[int], Any]
    send_outbox: dramatiq.Actor[[int], Any]


def register_actors(app: App) -> Actors:
    ns = app.config.desk.queue_namespace

    def _process_inbound(raw_id: int) -> None:
        process_inbound(app, raw_id)

    def _send_outbox(outbox_id: int) -> None:
        send_outbox(app, outbox_id)

    return Actors(
        process_inbound=dramatiq.actor(
            _process_inbound, broker=app.broker, actor_name="process_inbound",
            queue_name=f"{ns}-inbound", **RETRY_OPTIONS),
        send_outbox=dramatiq.actor(
            _send_outbox, broker=app.broker, actor_name="send_outbox",
            queue_name=f"{ns}-outbound", **RETRY_OPTIONS),
    )
