"""The SMTP door of ``postdesk serve`` in a process of its own.

Why: in one process the door shares the GIL with the worker threads processing mail, and
a burst that keeps them busy made answering ``250`` twenty times slower than
``postdesk smtp`` alone (BENCHMARKS.md, issue 11). So ``serve`` starts the door as a child
process (``multiprocessing``, start method "spawn": never a plain fork of a threaded
process) that commits each email (synced) before ``250`` and enqueues nothing. It hands
each email over a pipe to the desk process, where a thread enqueues the job on the
in-process broker and records the accept metric and log line, so ``/metrics`` of
``serve`` still counts every email.

Where the door commits (``HandOver``): on an SQLite desk into its own spool
(``storage/spool.py``), because SQLite's one write lock per database is taken by the
workers several times per email and a door waiting for it answered at the pace of
processing; the desk's thread moves spooled emails into ``raw_messages``
(``ingest/spooled.py``) in batches. On PostgreSQL the door inserts the ``raw_messages``
row itself, as ``postdesk smtp`` does. The worker threads run a little nicer than the door
(``WorkersYieldToTheDoor``), so a burst is answered first and processed as the CPU allows;
and with two CPUs or more the door has one of them to itself (``split_cpus``).

Nothing is lost between the two: an email whose hand-over never came (the door killed
between its commit and the send, or the pipe gone) is still in the spool, which the desk
moves when the door dies, when serve starts and stops, and a few seconds after a failed
move; on PostgreSQL it is a ``pending`` raw message, which the scheduler's
``sweep_pending_raw`` processes after ``scheduler.sweep_grace``.

Supervision (docs/faults.md): the door ignores SIGINT and SIGTERM (the desk process
stops it, after which it drains the pipe, so a Ctrl-C to the terminal's process group
stops both in order), and stops by itself when the desk process is gone (its end of the
pipe closes): a ``kill -9`` of ``serve`` never leaves an orphan holding the port. A door
that dies unexpectedly is started again at once, then after 0.5, 1, 2, 4 s; after
``RESTART_LIMIT`` deaths within ``RESTART_WINDOW_S`` (or a restart that cannot listen as
often) ``serve`` stops with exit status 1 and says why: a door that cannot stay up is a
fault for the operator (or systemd) to see, not one to hide in a loop."""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Final

from dramatiq import Middleware
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from postdesk import logs, observe
from postdesk.clock import SystemClock
from postdesk.ingest.accept import (
    AcceptFn,
    AcceptResult,
    Envelope,
    Receipt,
    ReceiptFn,
    accept,
)
from postdesk.ingest.smtp import DoorLimits, IngestHandler, SmtpServer
from postdesk.ingest.spooled import Moved, Spooled, move_spooled, spool_email
from postdesk.storage.blobs import BlobStore
from postdesk.storage.db import desk_engine, make_session_factory
from postdesk.storage.spool import Spool
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.errors import UserError

if TYPE_CHECKING:
    from postdesk.app import App
    from postdesk.workflow.desk.services import Dispatch

log = logging.getLogger("postdesk.door")

START_METHOD: Final = "spawn"
READY_TIMEOUT_S = 120.0      # a fresh interpreter importing the door, on a loaded machine
STOP_TIMEOUT_S = 30.0
RESTART_LIMIT = 5            # deaths within the window before serve gives up
RESTART_WINDOW_S = 60.0
RESTART_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 4.0)
MOVE_BATCH = 200             # spooled emails moved into the desk database per transaction
WORKER_NICE = 5              # serve's worker threads run this much nicer than its door
SPOOL_RETRY_S = 5.0          # after a failed move, the spool is swept again this often


# --- the SMTP server, as `postdesk smtp` and the door process build it ---------------------

def smtp_server(config: Config, accept_fn: ReceiptFn) -> SmtpServer:
    cfg = config.smtp_in
    handler = IngestHandler(config.desk.support_addresses, accept_fn,
                            max_recipients=cfg.max_recipients)
    return SmtpServer(cfg.host, cfg.port, cfg.max_message_bytes, handler,
                      DoorLimits.from_config(cfg))


def smtp_accept(app: App) -> AcceptFn:
    """What ``postdesk smtp`` hands its door: ``App.accept`` (commit, then enqueue) with a
    shared broker. With ``stub://`` nothing in this process consumes jobs, so an enqueue
    would only grow an in-memory queue by one message per email, for ever: the email is
    committed ``pending`` and left to the sweeper of a ``postdesk serve`` on the same
    database (as ``postdesk imap`` does)."""
    if not app.config.desk.broker_url.startswith("stub"):
        return app.accept

    def commit_only(raw: bytes, envelope: Envelope, source: str) -> AcceptResult:
        return app.accept(raw, envelope, source, enqueue=False)

    return commit_only


def start_smtp(server: SmtpServer, host: str, port: int) -> None:
    try:
        server.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"smtp_in.port: {host}:{port} is already in use") from None
        raise UserError(f"smtp_in: cannot listen on {host}:{port}: {exc.strerror}") from None
    except RuntimeError as exc:   # aiosmtpd wraps bind errors raised in its thread
        raise UserError(f"smtp_in: cannot listen on {host}:{port}: {exc}") from None


# --- the door process --------------------------------------------------------------------

class HandOver:
    """The door's ``accept``: commit, then send what the desk needs over the pipe. A failed
    send is logged, never answered 451: the email is committed, and the desk finds it.

    On an SQLite desk the email is committed into the door's spool (``spool_email``; the
    desk moves it into ``raw_messages``), so the 250 never waits for the desk database's
    write lock, which the workers take several times per email. On other databases the
    door commits ``raw_messages`` rows itself, as ``App.accept(enqueue=False)`` does: a
    row insert there waits for no other transaction."""

    def __init__(self, config: Config, conn: Connection):
        self.blobs = BlobStore.of_desk(config.desk.data_dir)
        self.clock = SystemClock()
        self.row_limit = config.desk.raw_in_database_bytes
        self.conn = conn
        self.lock = threading.Lock()   # accepts run on several threads; one sender at a time
        self.spool: Spool | None = None
        self.engine: Engine | None = None
        if uses_spool(config):
            self.spool = open_spool(config)
        else:
            self.engine = desk_engine(config)
            self.sessions = make_session_factory(self.engine)

    def __call__(self, raw: bytes, envelope: Envelope, source: str) -> Receipt:
        started = time.perf_counter()
        receipt: Spooled | AcceptResult
        if self.spool is not None:
            receipt = spool_email(self.spool, self.blobs, raw, envelope, source,
                                  now=self.clock.now(), row_limit=self.row_limit)
            message: tuple[Any, ...] = ("spooled", receipt.spool_id,
                                        time.perf_counter() - started)
        else:
            receipt = accept(self.sessions, self.blobs, raw, envelope, source,
                             now=self.clock.now(), notify=True, row_limit=self.row_limit)
            message = ("accepted", receipt.raw_id, receipt.created, receipt.status, source,
                       time.perf_counter() - started)
        try:
            with self.lock:
                self.conn.send(message)
        except (OSError, ValueError) as exc:
            log.warning("could not hand %s to the desk process (it is taken up after "
                        "scheduler.sweep_grace at the latest): %s", receipt.queued_as, exc)
        return receipt

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
        if self.engine is not None:
            self.engine.dispose()


def uses_spool(config: Config) -> bool:
    """Whether serve's door commits into its spool: on an SQLite desk (one write lock)."""
    return make_url(config.desk.database_url).get_backend_name() == "sqlite"


def open_spool(config: Config, *, spools: bool = True) -> Spool:
    """The door's spool: ``spools`` for the door, which commits emails into it; False for
    the desk, which moves them out (``Spool``)."""
    return Spool.of_desk(
        config.desk.data_dir, spools=spools,
        lock_timeout_s=config.desk.database_lock_timeout.as_timedelta().total_seconds())


def run_door(conn: Connection, config: Config, secret: bytes, verbose: bool,
             log_format: str, cpus: frozenset[int] | None = None) -> None:
    """The door process's body (a module-level function: "spawn" imports it by name).
    ``cpus``: the CPUs it runs on (``split_cpus``), set before it starts a thread."""
    if cpus is not None:
        run_on(cpus)
    # The desk process decides when the door stops (it drains the pipe after); a signal to
    # the whole process group (Ctrl-C, systemd's SIGTERM) must not stop the door first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.setup_logging(verbose, log_format)
    logs.register_secrets(config, secret)
    cfg = config.smtp_in
    hand_over: HandOver | None = None
    try:
        hand_over = HandOver(config, conn)
        server = smtp_server(config, hand_over)
        start_smtp(server, cfg.host, cfg.port)
    except UserError as exc:
        conn.send(("failed", str(exc)))
        if hand_over is not None:
            hand_over.close()
        return
    try:
        conn.send(("ready", server.address[1]))
        log.info("SMTP door process %s listening on %s:%s", os.getpid(), cfg.host,
                 server.address[1])
        while True:
            try:
                if conn.recv() == "stop":
                    break
            except (EOFError, OSError):
                log.warning("the desk process is gone: the SMTP door stops")
                break
    finally:
        server.stop()
        hand_over.close()
        logs.flush()
        conn.close()


# --- the desk's side ---------------------------------------------------------------------

class DoorProcess:
    """Starts, watches and stops the door process; enqueues what it accepts."""

    def __init__(self, config: Config, secret: bytes, dispatch: Dispatch, engine: Engine, *,
                 verbose: bool = False, log_format: str = "text",
                 cpus: frozenset[int] | None = None):
        self.config, self.secret, self.dispatch = config, secret, dispatch
        self.cpus = cpus                     # the door's own CPUs (split_cpus), or None
        self.engine = engine                 # the desk's: spooled emails are moved into it
        self.spool: Spool | None = (open_spool(config, spools=False) if uses_spool(config)
                                    else None)
        self._left_in_spool = False          # a move failed: sweep the spool again soon
        self._last_sweep = time.monotonic()
        self.verbose, self.log_format = verbose, log_format
        self.context = multiprocessing.get_context(START_METHOD)
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.port: int | None = None
        self.failure: str | None = None      # set when serve must stop: the door is lost
        self._stopping = threading.Event()
        self._deaths: deque[float] = deque()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start the door and wait until it listens; UserError if it cannot. Emails an
        earlier serve spooled and never moved (it was killed) are moved first."""
        self._sweep_spool()
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="door-watcher",
                                         daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the door, then take every id it handed over before it ended."""
        self._stopping.set()
        self._ask_to_stop()
        if self._watcher is not None:
            self._watcher.join(STOP_TIMEOUT_S)
        process = self.process
        if process is not None and process.is_alive():
            log.warning("the SMTP door process %s did not stop in %.0f s: killing it",
                        process.pid, STOP_TIMEOUT_S)
            process.kill()
            process.join(STOP_TIMEOUT_S)
            if self._watcher is not None:
                self._watcher.join(STOP_TIMEOUT_S)
        # Whatever the door spooled and could not hand over, before the workers stop.
        self._sweep_spool()
        if self.spool is not None:
            self.spool.close()

    # --- internals ---
    def _spawn(self) -> None:
        ours, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=run_door, name="postdesk-smtp-door", daemon=False,
            args=(theirs, self.config, self.secret, self.verbose, self.log_format, self.cpus))
        process.start()
        # Only the door holds its end now: when it dies, our end reads EOF.
        theirs.close()
        self.process, self.conn = process, ours
        ready = wait([ours, process.sentinel], READY_TIMEOUT_S)
        message: Any = None
        if ours in ready:
            try:
                message = ours.recv()
            except EOFError:
                message = None
        if isinstance(message, tuple) and message[0] == "ready":
            self.port = int(message[1])
            return
        self._reap(process, ours)
        if isinstance(message, tuple) and message[0] == "failed":
            raise UserError(str(message[1]))
        if not ready:
            raise UserError(f"smtp_in: the SMTP door process did not listen within "
                            f"{READY_TIMEOUT_S:.0f} s")
        raise UserError(f"smtp_in: the SMTP door process ended before it listened "
                        f"({_exit_text(process)})")

    def _ask_to_stop(self) -> None:
        process, conn = self.process, self.conn
        if process is not None and conn is not None and process.is_alive():
            # OSError: it is ending already (its end of the pipe is closed).
            with contextlib.suppress(OSError):
                conn.send("stop")

    def _reap(self, process: BaseProcess, conn: Connection) -> None:
        if process.is_alive():
            process.kill()
        process.join(STOP_TIMEOUT_S)
        conn.close()

    def _watch(self) -> None:
        while True:
            process, conn = self.process, self.conn
            assert process is not None and conn is not None
            self._drain(conn)          # until the door's end closes: it stopped or died
            process.join()
            if self._stopping.is_set():
                return
            self._sweep_spool()        # what it spooled but died before handing over
            why = _exit_text(process)
            restart = self._restart_delay(f"the SMTP door process died {RESTART_LIMIT} "
                                          f"times in {RESTART_WINDOW_S:.0f} s (last: {why})")
            if restart is None:
                return
            log.warning("the SMTP door process %s ended unexpectedly (%s): starting a new "
                        "one%s", process.pid, why,
                        f" in {restart:g} s" if restart else "")
            while True:
                if self._stopping.wait(restart):
                    return
                try:
                    self._spawn()
                    if self._stopping.is_set():   # stop() came while it was starting
                        self._ask_to_stop()
                    break
                except UserError as exc:
                    restart = self._restart_delay(
                        f"the SMTP door process could not be started again: {exc}")
                    if restart is None:
                        return
                    log.warning("the SMTP door process could not start (%s): trying again "
                                "in %g s", exc, restart)
            log.info("SMTP door process %s serves again on port %s", self.pid, self.port)

    def _restart_delay(self, give_up_why: str) -> float | None:
        """The wait before the next start; or None after too many deaths in the window,
        when serve is told to stop, saying ``give_up_why``."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > RESTART_WINDOW_S:
            self._deaths.popleft()
        if len(self._deaths) >= RESTART_LIMIT:
            log.error("%s: postdesk serve stops", give_up_why)
            self.failure = give_up_why
            return None
        return RESTART_DELAYS_S[min(len(self._deaths) - 1, len(RESTART_DELAYS_S) - 1)]

    def _drain(self, conn: Connection) -> None:
        while True:
            try:
                if not conn.poll(SPOOL_RETRY_S):
                    self._retry_spool()
                    continue
                message = conn.recv()
                spooled: dict[int, float] = {}     # spool id -> seconds to its commit
                # Spooled emails that arrived together are moved in one transaction: one
                # write lock on the desk database for a burst, not one per email.
                while True:
                    if isinstance(message, tuple) and message[0] == "spooled":
                        spooled[message[1]] = message[2]
                    elif isinstance(message, tuple) and message[0] == "accepted":
                        self._accepted(*message[1:])
                    if len(spooled) >= MOVE_BATCH or not conn.poll(0):
                        break
                    message = conn.recv()
            except (EOFError, OSError):
                conn.close()
                return
            if spooled:
                self._move(spooled)
            self._retry_spool()

    def _accepted(self, raw_id: int, created: bool, status: str, source: str,
                  seconds: float | None) -> None:
        try:
            observe.accepted(raw_id, created, source, seconds)
            if status == "pending":
                self.dispatch.inbound(raw_id)
        except Exception:
            # This thread also watches the door: it must outlive any one email, which is
            # committed and left to the sweeper.
            log.exception("could not enqueue raw message %s (the sweeper will)", raw_id)

    def _enqueue_moved(self, moved: list[Moved], seconds: dict[int, float]) -> None:
        for one in moved:
            self._accepted(one.result.raw_id, one.result.created, one.result.status,
                           one.source, seconds.get(one.spool_id))

    def _move(self, spooled: dict[int, float]) -> None:
        """Move the spooled emails the door handed over into the desk database, then
        enqueue them. On failure (the desk database locked past its timeout, say) they
        stay spooled and are moved by the next sweep."""
        assert self.spool is not None
        try:
            moved = move_spooled(self.engine, self.spool, self.spool.rows(list(spooled)))
        except Exception:
            log.exception("could not move %d spooled emails into the desk database (they "
                          "stay in the spool and are moved again)", len(spooled))
            self._left_in_spool = True
            return
        self._enqueue_moved(moved, spooled)

    def _retry_spool(self) -> None:
        if self._left_in_spool and time.monotonic() - self._last_sweep >= SPOOL_RETRY_S:
            self._sweep_spool()

    def _sweep_spool(self) -> None:
        """Move every email in the spool (oldest first): what a door spooled but did not
        hand over (killed in between), or a move that failed."""
        if self.spool is None:
            return
        self._last_sweep = time.monotonic()
        try:
            while rows := self.spool.oldest(MOVE_BATCH):
                # Not handed over: how long the door took is not known.
                self._enqueue_moved(move_spooled(self.engine, self.spool, rows), {})
        except Exception:
            log.exception("could not move the spooled emails into the desk database (they "
                          "stay in the spool and are moved again in %.0f s)", SPOOL_RETRY_S)
            self._left_in_spool = True
            return
        self._left_in_spool = False


class WorkersYieldToTheDoor(Middleware):
    """Dramatiq middleware for serve's workers: each worker thread lowers its own CPU
    priority (Linux nice is per thread) by ``WORKER_NICE``. With two cores shared by the
    door, the workers and the desk's mover, a burst would otherwise have the workers'
    processing (10-15 ms CPU per email) crowd out the door's accepting (about 1 ms), and
    the 250s would come at the pace of processing. The door and the workers share no lock
    since the door writes its own spool, so the workers' lower priority cannot hold the
    door up (it did when both wrote the desk database: BENCHMARKS.md)."""

    def after_worker_thread_boot(self, broker: Any, thread: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):   # not Linux: nothing to do
            # who=0 is the calling thread on Linux.
            current = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, 0, min(19, current + WORKER_NICE))


@dataclass(frozen=True)
class CpuSplit:
    door: frozenset[int]
    desk: frozenset[int]


def cpu_split(available: AbstractSet[int]) -> CpuSplit | None:
    """How serve shares the CPUs it may run on: the lowest for the door, the others for
    the desk; None with fewer than two (nothing to share)."""
    if len(available) < 2:
        return None
    door = min(available)
    return CpuSplit(frozenset({door}), frozenset(available) - {door})


def split_cpus() -> frozenset[int] | None:
    """Keep the calling thread (serve's main thread, before it starts the workers, the
    door's mover and the scheduler, which inherit it) off one CPU, and return that CPU
    for the door process (``DoorProcess(cpus=...)``); None where there is only one, or
    the platform cannot pin threads (not Linux).

    Why: each process is held to about one core by its GIL anyway, but on two cores a
    desk busy processing took the core the door and its client were about to run on:
    the door's loop thread waited 2.6 s to run for every 3.7 s it ran, and a burst over
    one connection was answered at 0.38x a do-nothing server, against 0.555x for the
    same door without a desk beside it; nicer worker threads, even SCHED_IDLE ones, did
    not change that (BENCHMARKS.md, fourteenth pass)."""
    try:
        split = cpu_split(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if split is None or not run_on(split.desk):
        return None
    return split.door


def run_on(cpus: frozenset[int]) -> bool:
    """Run the calling thread, and the threads it starts from now on, on ``cpus`` only
    (Linux: the affinity is each thread's own); False where that cannot be done."""
    try:
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError):
        return False
    return True


def _exit_text(process: BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"

