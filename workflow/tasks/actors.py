"""Dramatiq actors, thin: each takes an id and calls the body it was handed. The bodies
(process an inbound email, send an outbox email) and what they enqueue next are wired by
the shell (``postdesk.app``); this module knows nothing of the desk.

Actors are declared per App on that App's broker (not at import time on a global
broker), so one process can hold several isolated apps — the tests rely on that."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq import Broker

# Retries back off exponentially from 1 s to 10 min; a message is given up after ~2 days
# of failures (the sweeper still finds the raw message / outbox row afterwards).
RETRY_OPTIONS: dict[str, Any] = {"max_retries": 30, "min_backoff": 1_000,
                                 "max_backoff": 600_000}


@dataclass(frozen=True)
class Actors:
    process_inbound: dramatiq.Actor[[int], Any]
    send_outbox: dramatiq.Actor[[int | list[int]], Any]


def register_actors(broker: Broker, namespace: str, *, on_inbound: Callable[[int], object],
                    on_outbox: Callable[[list[int]], object]) -> Actors:
    """Inbound and outbound work have their own queues, and a worker runs a prefetched
    send before prefetched inbound work (dramatiq: a lower priority number runs first),
    so acknowledgements do not wait behind a backlog of inbound processing.

    One send job may carry several outbox ids (the emails one inbound email wrote: one
    message on the broker instead of one each); ``on_outbox`` is handed them all."""

    def process_inbound(raw_id: int) -> None:
        on_inbound(raw_id)

    def send_outbox(outbox_ids: int | list[int]) -> None:
        on_outbox([outbox_ids] if isinstance(outbox_ids, int) else outbox_ids)

    # The decorator form: dramatiq's overloads type ``actor(fn, **options)`` only without
    # options; ``actor(**options)(fn)`` is the same call, typed.
    return Actors(
        process_inbound=dramatiq.actor(
            broker=broker, actor_name="process_inbound", priority=10,
            queue_name=f"{namespace}-inbound", **RETRY_OPTIONS)(process_inbound),
        send_outbox=dramatiq.actor(
            broker=broker, actor_name="send_outbox", priority=0,
            queue_name=f"{namespace}-outbound", **RETRY_OPTIONS)(send_outbox),
    )
