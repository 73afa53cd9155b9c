"""The helper processes an import hands its pure work to (parsing, rendering): forks of
the importing process, each with a pipe for jobs and a pipe for results.

Why not ``concurrent.futures.ProcessPoolExecutor``: there a job reaches its process
through two threads of the importing process (one moves it to the call queue, one
pickles and writes it), and each needs the GIL, which the thread recording the import
holds for a whole switch interval at a time. The helper sat idle waiting for work that
had been submitted long before, unless the recording thread gave the GIL away after
each submission (py-spy put a quarter of its samples there). Here the thread that
submits a job pickles and writes it itself, into a pipe widened to hold a part's jobs
(``_widen``), so it is on its way at once; one thread per helper takes the results back,
waiting for them with the GIL released.

A job is a module-level function and its one argument (both pickled; a fork has the
same modules, patched ones included). A helper that dies (a crash in C code, killed)
fails its pending jobs with ``HelperGone``, as does a pool shut down; a submission to it
raises ``HelperGone``. A helper exits when its job pipe closes, and on its own when the
importing process is gone (``initializer`` may watch for that: see the importer)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:   # not POSIX: no fork either
    fcntl = None  # type: ignore[assignment]

_FORK = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() \
    else None
_R = TypeVar("_R")
# How long a helper is given to finish its job and exit at shutdown before it is killed.
_EXIT_WAIT_S = 5.0


class HelperGone(Exception):
    """The helper process ended (or was stopped) before it answered."""


def can_fork() -> bool:
    return _FORK is not None


class HelperPool:
    """``count`` helper processes, started at once, each running ``initializer(*initargs)``
    first. A job goes to the helper with the fewest jobs waiting (the first of those
    tied), so with one helper the jobs run in the order submitted."""

    def __init__(self, count: int, initializer: Callable[..., object],
                 initargs: Sequence[Any] = ()):
        self._helpers: list[_Helper] = []
        try:
            for _ in range(count):
                # A fork inherits every descriptor: this process's ends of the helpers
                # started before are closed in it, or an earlier helper would not see its
                # job pipe close (EOF) at shutdown until this one had exited.
                inherited = [end for h in self._helpers for end in h.parent_ends]
                self._helpers.append(_Helper(initializer, initargs, inherited))
        except BaseException:
            self.shutdown(kill=True)
            raise

    def submit(self, fn: Callable[[Any], _R], arg: Any) -> Future[_R]:
        live = [h for h in self._helpers if not h.gone]
        if not live:
            raise HelperGone("no helper process is left")
        return min(live, key=lambda h: h.waiting).submit(fn, arg)

    def shutdown(self, *, kill: bool = False) -> None:
        """Stop every helper: its pending jobs fail with ``HelperGone``. ``kill``: at once
        (a stuck helper); otherwise each finishes the job in hand and exits."""
        for helper in self._helpers:
            helper.stop(kill=kill)
        for helper in self._helpers:
            helper.join()
        self._helpers = []


class _Helper:
    def __init__(self, initializer: Callable[..., object], initargs: Sequence[Any],
                 inherited: list[Connection]):
        assert _FORK is not None, "helper processes need the fork start method"
        job_reader, self._jobs = _FORK.Pipe(duplex=False)
        self._results, result_writer = _FORK.Pipe(duplex=False)
        self.parent_ends = (self._jobs, self._results)
        for end in self.parent_ends:
            _widen(end)
        self.process = _FORK.Process(
            target=_serve, name="postdesk-import-helper", daemon=True,
            args=(job_reader, result_writer, [*inherited, *self.parent_ends], initializer,
                  tuple(initargs)))
        self.process.start()
        job_reader.close()
        result_writer.close()
        self._lock = threading.Lock()
        self._pending: dict[int, Future[Any]] = {}
        self._numbers = itertools.count()
        self.gone = False
        self._reader = threading.Thread(target=self._read, name="import-helper-results",
                                        daemon=True)
        self._reader.start()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def submit(self, fn: Callable[[Any], _R], arg: Any) -> Future[_R]:
        future: Future[_R] = Future()
        number = next(self._numbers)
        with self._lock:
            if self.gone:
                raise HelperGone("the helper process ended")
            self._pending[number] = future
        try:
            self._jobs.send((number, fn, arg))
        except (OSError, ValueError) as exc:   # its end closed: it died, or was stopped
            self._fail_pending()
            raise HelperGone("the helper process ended") from exc
        except Exception as exc:  # noqa: BLE001 - the job cannot be pickled: it fails alone
            with self._lock:
                self._pending.pop(number, None)
            future.set_exception(exc)
        return future

    def _read(self) -> None:
        while True:
            try:
                number, ok, value = self._results.recv()
            except (EOFError, OSError):   # the helper ended, or this end was closed
                break
            with self._lock:
                future = self._pending.pop(number, None)
            if future is None:
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        self._fail_pending()

    def _fail_pending(self) -> None:
        with self._lock:
            self.gone = True
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(HelperGone("the helper process ended"))

    def stop(self, *, kill: bool) -> None:
        self._fail_pending()
        self._jobs.close()    # the helper's next read ends: it exits
        if kill:
            self.process.kill()

    def join(self) -> None:
        self.process.join(_EXIT_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._reader.join(_EXIT_WAIT_S)   # the helper's end closed with it: EOF
        self._results.close()


def _widen(end: Connection) -> None:
    """Give the pipe the largest buffer the system allows (Linux: 1 MiB by default, not
    64 KiB): a part's jobs, some 200 KiB of emails to parse, then fit in it, so the
    recording thread writes them and goes on while the helper is still at the job
    before. With the default it waited there for the helper, a second per 1,000 emails."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    size = _pipe_max_size()
    if set_size is None or size is None:
        return
    with contextlib.suppress(OSError):   # not allowed: the default size serves
        fcntl.fcntl(end.fileno(), set_size, size)


@functools.cache
def _pipe_max_size() -> int | None:
    """The largest pipe buffer the system allows (read once: two pipes per helper)."""
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as limit:
            return int(limit.read())
    except (OSError, ValueError):   # not Linux
        return None


def _serve(jobs: Connection, results: Connection, not_ours: list[Connection],
           initializer: Callable[..., object], initargs: tuple[Any, ...]) -> None:
    """A helper's life: run each job as it comes, send back its result or its error."""
    for end in not_ours:
        end.close()
    initializer(*initargs)
    while True:
        try:
            number, fn, arg = jobs.recv()
        except (EOFError, OSError):   # the importing process closed its end, or died
            return
        try:
            answer = (number, True, fn(arg))
        except Exception as exc:  # noqa: BLE001 - the caller decides what an error means
            answer = (number, False, exc)
        try:
            results.send(answer)
        except (OSError, ValueError):   # nobody reads any more
            return
        except Exception as exc:  # noqa: BLE001 - a result or error that cannot be pickled
            results.send((number, False, HelperGone(f"its answer could not be sent: {exc}")))
