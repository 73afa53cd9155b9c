"""serve's worker threads yield the CPU to its SMTP door (postdesk/door.py
``WorkersYieldToTheDoor``): each worker thread, as Dramatiq boots it, lowers its own
priority; the process's other threads (the door's mover, the scheduler) keep theirs.
With two CPUs or more the door has one to itself (``cpu_split``, ``split_cpus``)."""

from __future__ import annotations

import os
import sys
import threading

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from postdesk.door import WORKER_NICE, CpuSplit, WorkersYieldToTheDoor, cpu_split, split_cpus

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


def test_the_door_gets_the_lowest_cpu_and_the_desk_the_others() -> None:
    assert cpu_split({0, 1}) == CpuSplit(frozenset({0}), frozenset({1}))
    assert cpu_split({7, 3, 12}) == CpuSplit(frozenset({3}), frozenset({7, 12}))


def test_with_one_cpu_nothing_is_shared_out() -> None:
    assert cpu_split({5}) is None
    assert cpu_split(set()) is None


def test_split_cpus_keeps_the_calling_thread_and_its_new_threads_off_the_doors_cpu(
) -> None:
    """In a thread of its own, as serve's main thread before it starts the others: the
    test's thread keeps its CPUs."""
    mine = os.sched_getaffinity(0)
    seen: dict[str, object] = {}

    def as_serve() -> None:
        seen["door"] = split_cpus()
        seen["desk"] = os.sched_getaffinity(0)
        started_after = threading.Thread(
            target=lambda: seen.__setitem__("child", os.sched_getaffinity(0)))
        started_after.start()
        started_after.join()

    serve = threading.Thread(target=as_serve)
    serve.start()
    serve.join()
    split = cpu_split(mine)
    if split is None:     # a one-CPU machine: nothing pinned
        assert seen == {"door": None, "desk": mine, "child": mine}
    else:
        assert seen == {"door": split.door, "desk": split.desk, "child": split.desk}
    assert os.sched_getaffinity(0) == mine
