"""The import's helper processes alone (postdesk.helper_processes): jobs answered in order,
errors handed back, and a helper that dies, is stuck or is shut down never leaves a
caller waiting."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postdesk.helper_processes import HelperGone, HelperPool, can_fork

pytestmark = pytest.mark.skipif(not can_fork(), reason="helper processes need fork")
WAIT_S = 30

# Set by the initializer in each helper (a fork: the parent's copy stays None).
_started_with: str | None = None


def _remember(value: str) -> None:
    global _started_with
    _started_with = value


def _pid_and_start(_arg: object) -> tuple[int, str | None]:
    return os.getpid(), _started_with


def _square(n: int) -> int:
    return n * n


def _fails(message: str) -> None:
    raise ValueError(message)


def _dies(_arg: object) -> None:
    os._exit(70)   # as a crash in C code would


def _sleeps(seconds: float) -> None:
    time.sleep(seconds)


def _unpicklable(_arg: object) -> object:
    return lambda: None


@pytest.fixture
def pool() -> Iterator[HelperPool]:
    helpers = HelperPool(1, _remember, ("configured",))
    yield helpers
    helpers.shutdown(kill=True)


def test_a_job_runs_in_a_forked_helper_that_ran_the_initializer_first(pool: HelperPool):
    pid, started_with = pool.submit(_pid_and_start, None).result(WAIT_S)
    assert pid != os.getpid()
    assert started_with == "configured"
    assert _started_with is None   # this process's copy is untouched


def test_results_come_back_to_the_job_that_asked(pool: HelperPool):
    futures = [pool.submit(_square, n) for n in range(200)]
    assert [f.result(WAIT_S) for f in futures] == [n * n for n in range(200)]


def test_a_jobs_error_is_raised_by_its_result_and_the_helper_goes_on(pool: HelperPool):
    failing = pool.submit(_fails, "no good")
    with pytest.raises(ValueError, match="no good"):
        failing.result(WAIT_S)
    assert pool.submit(_square, 7).result(WAIT_S) == 49


def test_an_answer_that_cannot_be_sent_back_is_an_error_not_a_hang(pool: HelperPool):
    with pytest.raises(HelperGone, match="could not be sent"):
        pool.submit(_unpicklable, None).result(WAIT_S)
    assert pool.submit(_square, 3).result(WAIT_S) == 9


def test_a_job_that_cannot_be_sent_fails_alone_and_the_helper_goes_on(pool: HelperPool):
    # As the executor did: the job's own future fails (the importer then parses or
    # renders that part itself), and the next job runs.
    failed = pool.submit(_square, lambda: None)
    with pytest.raises(Exception, match="pickle"):
        failed.result(WAIT_S)
    assert pool.submit(_square, 7).result(WAIT_S) == 49


def test_a_helper_that_dies_fails_its_waiting_jobs_and_refuses_more(pool: HelperPool):
    behind = [pool.submit(_square, 2)]
    dying = pool.submit(_dies, None)
    behind.append(pool.submit(_square, 3))   # queued behind the death
    with pytest.raises(HelperGone):
        dying.result(WAIT_S)
    assert behind[0].result(WAIT_S) == 4
    with pytest.raises(HelperGone):
        behind[1].result(WAIT_S)
    with pytest.raises(HelperGone):
        pool.submit(_square, 4)


@pytest.mark.parametrize("dies_first", [True, False], ids=["first", "second"])
def test_with_two_helpers_the_death_of_either_is_seen_though_the_other_lives(
        dies_first: bool) -> None:
    pool = HelperPool(2, _remember, ("two",))
    try:
        # Both idle: a job goes to the first helper; the next to the second.
        if dies_first:
            dying, living = pool.submit(_dies, None), pool.submit(_sleeps, 0.5)
        else:
            living, dying = pool.submit(_sleeps, 0.5), pool.submit(_dies, None)
        with pytest.raises(HelperGone):
            dying.result(WAIT_S)
        assert living.result(WAIT_S) is None
        # The dead one gets no more jobs: every later job goes to the survivor.
        pids = {pool.submit(_pid_and_start, None).result(WAIT_S)[0] for _ in range(4)}
        assert len(pids) == 1
    finally:
        pool.shutdown(kill=True)


def test_jobs_go_to_the_helper_with_the_fewest_waiting() -> None:
    pool = HelperPool(2, _remember, ("two",))
    try:
        busy = pool.submit(_sleeps, 1.0)
        pids = {pool.submit(_pid_and_start, None).result(WAIT_S)[0] for _ in range(3)}
        busy.result(WAIT_S)
        assert len(pids) == 1   # all to the idle helper, none behind the sleeping one
    finally:
        pool.shutdown(kill=True)


def test_shutting_down_fails_what_waits_and_ends_the_helpers() -> None:
    pool = HelperPool(1, _remember, ("stopping",))
    pid, _ = pool.submit(_pid_and_start, None).result(WAIT_S)
    stuck = pool.submit(_sleeps, 3600)
    pool.shutdown(kill=True)
    with pytest.raises(HelperGone):
        stuck.result(WAIT_S)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_clean_shutdown_lets_the_job_in_hand_finish_and_the_helper_exit() -> None:
    pool = HelperPool(1, _remember, ("clean",))
    pid, _ = pool.submit(_pid_and_start, None).result(WAIT_S)
    pool.shutdown()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _length(data: bytes) -> int:
    return len(data)


@pytest.mark.skipif(not Path("/proc/sys/fs/pipe-max-size").exists(), reason="Linux only")
def test_jobs_that_fit_the_widened_pipe_are_handed_over_without_waiting_for_a_busy_helper(
        pool: HelperPool) -> None:
    """The recording thread hands a part's emails over and goes on: with a pipe of the
    default 64 KiB it waited until the helper had finished the job in hand."""
    busy = pool.submit(_sleeps, 5.0)
    lengths = [pool.submit(_length, b"x" * 40_000) for _ in range(10)]   # 400 KB
    assert not busy.done()
    assert [f.result(WAIT_S) for f in lengths] == [40_000] * 10
