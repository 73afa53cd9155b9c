"""serve's worker threads yield the CPU to its SMTP door (postdesk/door.py
``WorkersYieldToTheDoor``): each worker thread, as Dramatiq boots it, lowers its own
priority; the process's other threads (the door's mover, the scheduler) keep theirs."""

from __future__ import annotations

import os
import sys
import threading

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from postdesk.door import WORKER_NICE, WorkersYieldToTheDoor

pytestmark = pytest.mark.skipif(sys.platform != "linux",
                                reason="per-thread nice values are Linux's")


def test_each_worker_thread_runs_nicer_than_the_rest_of_the_process() -> None:
    broker = StubBroker()
    broker.add_middleware(WorkersYieldToTheDoor())
    seen: dict[int, int] = {}

    def report() -> None:
        seen[threading.get_native_id()] = os.getpriority(os.PRIO_PROCESS, 0)

    actor = dramatiq.actor(report, broker=broker, queue_name="nice-test")

    before = os.getpriority(os.PRIO_PROCESS, 0)
    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for _ in range(20):
            actor.send()
        broker.join("nice-test")
        worker.join()
    finally:
        worker.stop()
    assert seen and set(seen.values()) == {min(19, before + WORKER_NICE)}
    assert threading.get_native_id() not in seen
    assert os.getpriority(os.PRIO_PROCESS, 0) == before   # this thread kept its own
