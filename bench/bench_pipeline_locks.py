"""How long processing one inbound email holds database locks, and how workers scale when
every email comes from ONE sender.

Run (from any directory, with any python3; the script re-executes itself with the measured
tree's own ``.venv/bin/python``)::

    python3 bench/bench_pipeline_locks.py                      # the tree the script lives in
    python3 bench/bench_pipeline_locks.py --tree /work/before  # another checkout, same script
    python3 bench/bench_pipeline_locks.py --emails 300 --lock-emails 200 --workers 1,4

The tree needs its own venv: ``cd TREE && python3 -m venv .venv && .venv/bin/pip install -q
-e '.[dev]'``. PostgreSQL (admin URL ``--pg-admin-url``, default
``$POSTDESK_TEST_POSTGRES_URL`` or ``postgresql://postgres@127.0.0.1:5432/postgres``) and Redis
(``--redis-url``, default ``redis://127.0.0.1:6379/0``) must run on this machine: loopback
addresses only. Every run creates and drops its own database and uses its own Redis queue
namespace. The script prints tables and asserts nothing.

Emails are fed through the public doors only: ``postdesk db upgrade``, then ``postdesk smtp``
(with ``broker_url = "stub://"``, so accepting an email enqueues nothing anyone consumes) and
smtplib, which leaves N raw messages ``pending``. All emails come from one client contact
(``client0@client.example``; ``--senders`` adds rows with more senders, round robin), each
with its own subject, so each opens a ticket. ``flood_tickets_per_hour`` and
``auto_reply_limit_per_hour`` are set far above N, so nothing is quarantined as a flood and
every acknowledgement is a real, sendable email.

Part 1 - lock hold per email (SQLite and PostgreSQL, in one child process running the tree's
code): the tree's own ``App`` with a StubBroker and ONE worker thread processes the pending
emails one at a time (enqueue one, wait until every queue is empty, next), so nothing waits
for a lock and every transaction is attributed to its email. Measured from the outside, with
library-level hooks only, so the same code works on every layout of the tree:

* SQLAlchemy events on the ``Engine`` class (``begin``, ``before_cursor_execute``, ``commit``,
  ``rollback``) plus a wrapper of the dialect's ``do_commit``/``do_rollback``: a transaction
  runs from ``begin`` to the return of the DBAPI COMMIT/ROLLBACK.
* A Dramatiq middleware tags each transaction with the job (actor) that ran it. The jobs of
  one email are every job run between its enqueue and the queues being empty again. Jobs of
  the outbox sender (actor name containing ``send``, ``outbox`` or ``deliver``) are reported
  apart; every other job is "processing the email".
* Rendering/composing outgoing email = the outermost call of ``jinja2.Template.render``,
  ``jinja2.Environment.get_template/select_template/get_or_select_template`` and, on
  ``email.message.EmailMessage`` instances only (parsed inbound mail is a compat32
  ``Message``), ``set_content``, ``add_alternative``, ``add_attachment``, ``make_*``,
  ``__setitem__`` (header parsing), ``as_bytes`` and ``as_string``.

Definitions, all per email (summed over its processing jobs), in ms:

* processing tx: BEGIN to end of COMMIT of the transaction(s) whose SQL contains ``SELECT ...
  FROM raw_messages ... FOR UPDATE`` (the old one-transaction pipeline); on SQLite, which
  renders no FOR UPDATE, the transaction(s) that SELECT from and UPDATE ``raw_messages``.
  "-" when no such transaction exists (a pipeline that claims without a row lock).
* all tx: every transaction of the email's processing jobs (claim + record + notify ..., as
  the pipeline splits them), and their number.
* lock held: per transaction, from the first ``FOR UPDATE`` statement (PostgreSQL row lock)
  or, on SQLite, from the first write - ``BEGIN IMMEDIATE`` or INSERT/UPDATE/DELETE, i.e. the
  database-wide write lock - to the end of COMMIT; summed. "first write -> commit" is the same
  from the first INSERT/UPDATE/DELETE on either database (PostgreSQL holds the written rows'
  locks from then on; on SQLite it is shorter than the lock when BEGIN IMMEDIATE took it).
* contacts row lock: from ``SELECT contacts.id ... FOR UPDATE`` (the flood check) to the end
  of COMMIT; PostgreSQL only (SQLite renders no FOR UPDATE).
* render+compose: time in the calls above; "in tx" = overlapping an open transaction of the
  same thread; "under lock" = overlapping the lock-held part of one.
* job wall: the processing jobs' own duration (Dramatiq before/after process_message).
* shares: per-email ratios (lock held / all tx, render in tx / all tx, lock held / job wall).
The first ``--warmup`` emails (template compilation, first imports) are excluded.

Part 2 - workers scaling (PostgreSQL + Redis, end to end): N emails are fed as above, then
k ``postdesk worker --config F`` processes (``worker_threads`` = ``--worker-threads``, 1 by
default so that k is the number of emails in progress at once; ``worker_prefetch`` = 2 so the
last messages are not stuck in one worker's prefetch) are
started and allowed to finish starting, then a child process enqueues every pending raw id
through the tree's ``App.enqueue_inbound`` (t0 = first enqueue). Done = no raw message
``pending`` and at least one ``acknowledgement`` in the outbox per ticket, polled with SQL
every 50 ms; "all sent" additionally waits for no outbox row ``queued``/``sending``.
emails/s = N / (done - t0). Repeated with k = 1 and 4 and with 1 and 5 senders, ``--repeat``
times, interleaved; the summary takes the best run of each (other load on a shared machine
only slows runs down). "lock-wait" is the mean number of sessions of the run's database that
``pg_stat_activity`` shows waiting on a lock (``wait_event_type = 'Lock'``: row locks, i.e. the
contacts row), sampled every 50 ms while emails are being processed: a direct view of the
serialisation that does not depend on how busy the CPUs are.
"""

from __future__ import annotations

import argparse
import email.message
import json
import os
import re
import shutil
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

from benchlib import (
    DEFAULT_PG_ADMIN,
    SUPPORT,
    Tree,
    child_env,
    fmt,
    free_port,
    pct,
    print_head,
    python_line,
    require_loopback,
    stop_process,
    wait_for_port,
)
from benchlib import database_url as pg_database_url
from benchlib import reexec_in_tree as _reexec_in_tree

SCRIPT = Path(__file__).resolve()
DEFAULT_TREE = SCRIPT.parent.parent
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
# Desk keys the benchmark sets; the optional ones are dropped (with a warning) if the tree's
# config model does not know them. flood_tickets_per_hour is required: without it the one
# sender's emails would be quarantined as a flood.
OPTIONAL_DESK_KEYS = ("auto_reply_limit_per_hour", "worker_prefetch", "worker_threads")
SEND_ACTOR = re.compile(r"send|outbox|deliver", re.I)

CONFIG_TEMPLATE = """
[desk]
name = "Bench Support"
support_addresses = ["{support}"]
ticket_prefix = "PD"
database_url = "{database_url}"
broker_url = "{broker_url}"
data_dir = "{data_dir}"
secret = "bench-secret-key"
queue_namespace = "{namespace}"
flood_tickets_per_hour = 1000000
{desk_extra}

[smtp_in]
host = "127.0.0.1"
port = {smtp_port}

[calendars.uk-office]
timezone = "Europe/London"
holidays = {{ country = "GB", subdiv = "ENG" }}

[calendars.uk-office.hours]
mon = "08:00-18:00"
tue = "08:00-18:00"
wed = "08:00-18:00"
thu = "08:00-18:00"
fri = "08:00-18:00"

[calendars.always]
always_open = true

[plans.enterprise]
calendar = "uk-office"
priority_calendar = {{ P1 = "always" }}
first_response = {{ P1 = "1h", P2 = "2h", P3 = "5h" }}
next_update = {{ P1 = "4h", P2 = "8h" }}
monthly_allowance = "30h"

[[orgs]]
slug = "clientco"
name = "Client Co"
plan = "enterprise"
domains = ["client.example"]

[[staff]]
email = "dev1@agency.example"
name = "Dev One"
role = "agent"

[[staff]]
email = "dev2@agency.example"
name = "Dev Two"
role = "lead"

[rota]
start = "2026-11-23"
weeks = ["dev1@agency.example", "dev2@agency.example"]
"""


# === shared helpers ========================================================================

def fmt_ms(value: float | None) -> str:
    return fmt(value)


# === part 1, in the child: the probes ======================================================

@dataclass
class Tx:
    thread: int
    job: int | None
    begin: float
    end: float = 0.0
    commit_at: float | None = None
    first_for_update: float | None = None
    first_contacts_lock: float | None = None
    first_write: float | None = None           # first INSERT/UPDATE/DELETE
    first_begin_immediate: float | None = None
    raw_for_update: bool = False
    raw_select: bool = False
    raw_update: bool = False
    statements: int = 0

    def finish(self) -> float:
        return self.end or self.commit_at or self.begin


@dataclass
class Job:
    actor: str
    window: int | None
    thread: int
    start: float
    end: float = 0.0


_FOR_UPDATE = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+)?UPDATE\b", re.I)
_FROM_CONTACTS = re.compile(r"\bFROM\s+\"?contacts\"?(?:\s|$)", re.I)
_FROM_RAW = re.compile(r"\bFROM\s+\"?raw_messages\"?(?:\s|$)", re.I)
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE)\b", re.I)
_SELECT_RAW = re.compile(r"\s*SELECT\b.*\bFROM\s+\"?raw_messages\"?(?:\s|$)", re.I | re.S)
_UPDATE_RAW = re.compile(r"\s*UPDATE\s+\"?raw_messages\"?\s", re.I)
_BEGIN_LOCK = re.compile(r"\s*BEGIN\s+(IMMEDIATE|EXCLUSIVE)\b", re.I)


class Probe:
    """Library-level hooks (SQLAlchemy engine events, jinja2, email, Dramatiq middleware)
    recording transactions, render/compose intervals and jobs, per thread."""

    def __init__(self) -> None:
        self.enabled = False
        self.window: int | None = None
        self.txs: list[Tx] = []
        self.jobs: list[Job] = []
        self.renders: list[tuple[int, int | None, float, float]] = []  # thread, job, t0, t1
        self._open: dict[int, Tx] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._patched_dialects: set[type] = set()

    # --- jobs (called by the Dramatiq middleware) ----------------------------------------
    def job_start(self, actor: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.jobs.append(Job(actor, self.window, threading.get_ident(), time.perf_counter()))
            self._local.job = len(self.jobs) - 1

    def job_end(self) -> None:
        index = getattr(self._local, "job", None)
        if index is not None:
            self.jobs[index].end = time.perf_counter()
            self._local.job = None

    def _job(self) -> int | None:
        return getattr(self._local, "job", None)

    # --- SQLAlchemy ----------------------------------------------------------------------
    def install_sqlalchemy(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "begin", self._on_begin)
        event.listen(Engine, "before_cursor_execute", self._on_statement)
        event.listen(Engine, "commit", self._on_commit)
        event.listen(Engine, "rollback", self._on_commit)

    def _new_tx(self, conn: Any) -> Tx:
        tx = Tx(thread=threading.get_ident(), job=self._job(), begin=time.perf_counter())
        self._open[id(conn)] = tx
        self._patch_dialect(type(conn.dialect))
        return tx

    def _on_begin(self, conn: Any) -> None:
        if self.enabled and id(conn) not in self._open:
            with self._lock:
                self._new_tx(conn)

    def _on_statement(self, conn: Any, _cursor: Any, statement: str, _params: Any,
                      _context: Any, _executemany: bool) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        with self._lock:
            tx = self._open.get(id(conn))
            if tx is None:
                if not _BEGIN_LOCK.match(statement):
                    return   # autocommit statement outside any transaction
                # A "begin" listener of the app's engine emitted BEGIN IMMEDIATE before ours ran.
                tx = self._new_tx(conn)
        tx.statements += 1
        if _BEGIN_LOCK.match(statement):
            tx.first_begin_immediate = tx.first_begin_immediate or now
        elif _WRITE.match(statement):
            tx.first_write = tx.first_write or now
        tx.raw_select = tx.raw_select or bool(_SELECT_RAW.match(statement))
        tx.raw_update = tx.raw_update or bool(_UPDATE_RAW.match(statement))
        if _FOR_UPDATE.search(statement):
            tx.first_for_update = tx.first_for_update or now
            if _FROM_CONTACTS.search(statement):
                tx.first_contacts_lock = tx.first_contacts_lock or now
            if _FROM_RAW.search(statement):
                tx.raw_for_update = True

    def _on_commit(self, conn: Any) -> None:
        with self._lock:
            tx = self._open.pop(id(conn), None)
        if tx is None:
            return
        tx.commit_at = time.perf_counter()
        self._local.closing = tx
        with self._lock:
            self.txs.append(tx)

    def _patch_dialect(self, cls: type) -> None:
        """Locks are released when the DBAPI COMMIT returns, after the ``commit`` event."""
        if cls in self._patched_dialects:
            return
        self._patched_dialects.add(cls)
        for name in ("do_commit", "do_rollback"):
            original = getattr(cls, name)

            def wrapper(dialect: Any, dbapi_conn: Any, _original: Any = original) -> Any:
                try:
                    return _original(dialect, dbapi_conn)
                finally:
                    tx = getattr(self._local, "closing", None)
                    if tx is not None:
                        tx.end = time.perf_counter()
                        self._local.closing = None

            setattr(cls, name, wrapper)

    # --- rendering and composing -----------------------------------------------------------
    def install_render_hooks(self) -> None:
        import jinja2

        targets: list[tuple[type, str, Callable[[Any], bool] | None]] = [
            (jinja2.Template, "render", None),
            (jinja2.Environment, "get_template", None),
            (jinja2.Environment, "select_template", None),
            (jinja2.Environment, "get_or_select_template", None),
        ]

        def composed(msg: Any) -> bool:
            return isinstance(msg, email.message.EmailMessage)

        email_classes: tuple[type, ...] = (email.message.Message, email.message.MIMEPart,
                                           email.message.EmailMessage)
        for cls in email_classes:
            for name in ("set_content", "add_alternative", "add_attachment", "make_alternative",
                         "make_mixed", "make_related", "__setitem__", "as_bytes", "as_string"):
                if name in vars(cls):
                    targets.append((cls, name, composed))
        for target, name, condition in targets:
            setattr(target, name, self._timed(vars(target)[name], condition))

    def _timed(self, fn: Callable[..., Any], condition: Callable[[Any], bool] | None
               ) -> Callable[..., Any]:
        probe = self

        def wrapper(obj: Any, *args: Any, **kwargs: Any) -> Any:
            if not probe.enabled or (condition is not None and not condition(obj)):
                return fn(obj, *args, **kwargs)
            depth = getattr(probe._local, "depth", 0)
            probe._local.depth = depth + 1
            start = time.perf_counter()
            try:
                return fn(obj, *args, **kwargs)
            finally:
                probe._local.depth = depth
                if depth == 0:
                    with probe._lock:
                        probe.renders.append((threading.get_ident(), probe._job(), start,
                                              time.perf_counter()))

        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        return wrapper


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def lock_start(tx: Tx, backend: str) -> float | None:
    if backend == "sqlite":
        return tx.first_begin_immediate or tx.first_write
    return tx.first_for_update


def is_processing_tx(tx: Tx, backend: str) -> bool:
    # SQLite renders no FOR UPDATE: there, the transaction that reads and updates the raw row.
    if backend == "sqlite":
        return tx.raw_select and tx.raw_update
    return tx.raw_for_update


def per_email(probe: Probe, backend: str, warmup: int) -> list[dict[str, Any]]:
    """One record per email (window), from the probe's raw intervals."""
    windows: dict[int, list[int]] = {}
    for index, job in enumerate(probe.jobs):
        if job.window is not None:
            windows.setdefault(job.window, []).append(index)
    txs_by_job: dict[int, list[Tx]] = {}
    for tx in probe.txs:
        if tx.job is not None:
            txs_by_job.setdefault(tx.job, []).append(tx)
    renders_by_job: dict[int, list[tuple[float, float]]] = {}
    for _thread, job_index, t0, t1 in probe.renders:
        if job_index is not None:
            renders_by_job.setdefault(job_index, []).append((t0, t1))

    ms = 1000.0
    out: list[dict[str, Any]] = []
    for raw_id in sorted(windows)[warmup:]:
        jobs = windows[raw_id]
        proc = [j for j in jobs if not SEND_ACTOR.search(probe.jobs[j].actor)]
        send = [j for j in jobs if SEND_ACTOR.search(probe.jobs[j].actor)]
        txs = [tx for j in proc for tx in txs_by_job.get(j, [])]
        renders = [r for j in proc for r in renders_by_job.get(j, [])]
        tx_ms = sum(tx.finish() - tx.begin for tx in txs) * ms
        raw_txs = [tx for tx in txs if is_processing_tx(tx, backend)]
        locked = [(tx, s) for tx in txs if (s := lock_start(tx, backend)) is not None]
        lock_ms = sum(tx.finish() - s for tx, s in locked) * ms
        write_ms = sum(tx.finish() - tx.first_write for tx in txs if tx.first_write) * ms
        contacts = [tx for tx in txs if tx.first_contacts_lock is not None]
        render_in_tx = sum(overlap(r0, r1, tx.begin, tx.finish())
                           for r0, r1 in renders for tx in txs) * ms
        render_locked = sum(overlap(r0, r1, s, tx.finish())
                            for r0, r1 in renders for tx, s in locked) * ms
        job_ms = sum(probe.jobs[j].end - probe.jobs[j].start for j in proc) * ms
        out.append({
            "raw_id": raw_id,
            "actors": sorted({probe.jobs[j].actor for j in jobs}),
            "jobs": len(proc),
            "job_ms": job_ms,
            "n_tx": len(txs),
            "tx_ms": tx_ms,
            "proc_tx_ms": (sum(tx.finish() - tx.begin for tx in raw_txs) * ms
                           if raw_txs else None),
            "lock_ms": lock_ms,
            "write_ms": write_ms,
            "contacts_ms": (sum(tx.finish() - (tx.first_contacts_lock or 0.0)
                                for tx in contacts) * ms if contacts else None),
            "render_ms": sum(r1 - r0 for r0, r1 in renders) * ms,
            "render_in_tx_ms": render_in_tx,
            "render_locked_ms": render_locked,
            "send_tx_ms": sum(tx.finish() - tx.begin for j in send
                              for tx in txs_by_job.get(j, [])) * ms,
            "share_locked": lock_ms / tx_ms if tx_ms else None,
            "share_render": render_in_tx / tx_ms if tx_ms else None,
            "share_locked_job": lock_ms / job_ms if job_ms else None,
        })
    return out


# --- before/after adapter ------------------------------------------------------------------
# The ONLY place that knows module paths inside the measured tree. It exists so that one
# script measures the code before and after the restructuring: newest layout first, then the
# old one. Everything else goes through App methods, the CLI and SQL.
APP_CANDIDATES = ("postdesk.app:App",)
LOAD_CONFIG_CANDIDATES = ("postdesk.workflow.rules.config:load_config",
                          "workflow.rules.config:load_config",
                          "postdesk.config:load_config")


def import_first(candidates: Sequence[str]) -> tuple[Any, str]:
    import importlib

    errors = []
    for spec in candidates:
        module_name, attr = spec.split(":")
        try:
            return getattr(importlib.import_module(module_name), attr), spec
        except (ImportError, AttributeError) as exc:
            errors.append(f"{spec}: {exc!r}")
    raise ImportError("none of these imports works in this tree:\n  " + "\n  ".join(errors))


def tree_app(config_path: str) -> tuple[Any, dict[str, str]]:
    app_cls, app_spec = import_first(APP_CANDIDATES)
    load_config, config_spec = import_first(LOAD_CONFIG_CANDIDATES)
    import postdesk

    used = {"App": app_spec, "load_config": config_spec, "postdesk": str(postdesk.__file__)}
    return app_cls(load_config(config_path)), used


def enqueue_inbound(app: Any, raw_id: int) -> None:
    if hasattr(app, "enqueue_inbound"):
        app.enqueue_inbound(raw_id)
    else:
        app.actors.process_inbound.send(raw_id)
# --- end of the adapter -------------------------------------------------------------------


def sql_rows(app: Any, query: str) -> list[tuple[Any, ...]]:
    from sqlalchemy import text

    with app.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query))]


def child_locks(config_path: str, out_path: str, warmup: int) -> None:
    import dramatiq

    probe = Probe()
    probe.install_sqlalchemy()
    probe.install_render_hooks()
    app, used = tree_app(config_path)
    backend = app.engine.dialect.name

    class JobTagger(dramatiq.Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            probe.job_start(message.actor_name)

        def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                                  exception: BaseException | None = None) -> None:
            probe.job_end()

        def after_skip_message(self, broker: Any, message: Any) -> None:
            probe.job_end()

    app.broker.add_middleware(JobTagger())
    ids = [int(r[0]) for r in sql_rows(
        app, "SELECT id FROM raw_messages WHERE status = 'pending' ORDER BY id")]
    try:
        app.start_workers(1)
    except TypeError:
        dramatiq.Worker(app.broker, worker_threads=1).start()

    def drain() -> None:
        for _ in range(10):
            before = len(probe.jobs)
            for queue in sorted(app.broker.get_declared_queues()):
                app.broker.join(queue, timeout=120_000, fail_fast=False)
            if len(probe.jobs) == before:
                return

    probe.enabled = True
    started = time.perf_counter()
    for raw_id in ids:
        probe.window = raw_id
        enqueue_inbound(app, raw_id)
        drain()
    elapsed = time.perf_counter() - started
    probe.enabled = False
    app.close()
    statuses = sql_rows(app, "SELECT status, COALESCE(reason, ''), COUNT(*) FROM raw_messages "
                             "GROUP BY 1, 2 ORDER BY 1, 2")
    outbox = sql_rows(app, "SELECT template, status, COUNT(*) FROM outbox GROUP BY 1, 2 "
                           "ORDER BY 1, 2")
    Path(out_path).write_text(json.dumps({
        "backend": backend, "used": used, "elapsed_s": elapsed, "emails": len(ids),
        "per_email": per_email(probe, backend, warmup),
        "statuses": [list(r) for r in statuses], "outbox": [list(r) for r in outbox],
    }))


def child_enqueue(config_path: str) -> None:
    app, _used = tree_app(config_path)
    ids = [int(r[0]) for r in sql_rows(
        app, "SELECT id FROM raw_messages WHERE status = 'pending' ORDER BY id")]
    t0 = time.time()
    for raw_id in ids:
        enqueue_inbound(app, raw_id)
    t1 = time.time()
    with suppress(Exception):
        app.close()
    print(json.dumps({"t0": t0, "t1": t1, "n": len(ids)}), flush=True)


# === the orchestrator ======================================================================

def reexec_in_tree(tree: Tree) -> None:
    """Run the tree's code with the tree's own interpreter: re-execute this script there."""
    _reexec_in_tree(tree, SCRIPT)


def make_email(i: int, sender: int, tag: str) -> tuple[str, bytes]:
    address = f"client{sender}@client.example"
    msg = EmailMessage()
    msg["From"] = f"Client {sender} <{address}>"
    msg["To"] = SUPPORT
    msg["Subject"] = f"Bench {tag}: printer {i} on floor {i % 7} does not print"
    msg["Message-ID"] = f"<bench-{tag}-{i}@client.example>"
    msg["Date"] = formatdate(localtime=False)
    msg.set_content(
        f"Hello,\n\nprinter {i} has stopped printing since this morning. The display says "
        f"'PC LOAD LETTER' and the queue holds {i % 13 + 1} jobs.\n\nCould you have a "
        f"look?\n\nThanks,\nClient {sender}\n")
    return address, msg.as_bytes()


@dataclass
class Desk:
    """One private desk: a temp dir, a config (plus a stub-broker twin for feeding), a
    database and a Redis namespace, removed afterwards."""

    tree: Tree
    workdir: Path
    backend: str           # sqlite | postgres
    broker_url: str
    pg_admin: str
    redis_url: str
    worker_threads: int
    # desk.worker_prefetch; None leaves the desk's default (32).
    worker_prefetch: int | None = 2
    namespace: str = field(default_factory=lambda: f"pdbench-{uuid.uuid4().hex[:10]}")
    db_name: str = ""
    config: Path = Path()
    feed_config: Path = Path()
    smtp_port: int = 0
    dropped_keys: list[str] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.workdir / 'postdesk.db'}"
        return pg_database_url(self.pg_admin, self.db_name)

    def write_configs(self) -> None:
        self.smtp_port = free_port()
        extra = {"auto_reply_limit_per_hour": "1000000",
                 "worker_threads": str(self.worker_threads)}
        if self.worker_prefetch is not None:
            extra["worker_prefetch"] = str(self.worker_prefetch)
        for key in self.dropped_keys:
            extra.pop(key, None)
        for path, broker in ((self.config, self.broker_url), (self.feed_config, "stub://")):
            path.write_text(CONFIG_TEMPLATE.format(
                support=SUPPORT, database_url=self.database_url, broker_url=broker,
                data_dir=self.workdir / "data", namespace=self.namespace,
                smtp_port=self.smtp_port,
                desk_extra="\n".join(f"{k} = {v}" for k, v in extra.items())))

    def postdesk(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.tree.postdesk), *args], capture_output=True, text=True,
                              env=child_env(), cwd=self.workdir, timeout=300)
        if check and proc.returncode != 0:
            raise RuntimeError(f"postdesk {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        return proc

    def setup(self) -> None:
        self.config = self.workdir / "postdesk.toml"
        self.feed_config = self.workdir / "feed.toml"
        if self.backend == "postgres":
            self.db_name = f"pdbench_{uuid.uuid4().hex[:12]}"
            with pg_admin(self.pg_admin) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
        for _ in range(len(OPTIONAL_DESK_KEYS) + 1):
            self.write_configs()
            check = self.postdesk("config", "check", "--config", str(self.config), check=False)
            if check.returncode == 0:
                break
            unknown = [k for k in OPTIONAL_DESK_KEYS
                       if k in check.stdout + check.stderr and k not in self.dropped_keys]
            if not unknown:
                raise RuntimeError(f"config check failed:\n{check.stdout}{check.stderr}")
            print(f"  note: the tree's config does not accept {unknown}; left out",
                  file=sys.stderr)
            self.dropped_keys += unknown
        self.postdesk("db", "upgrade", "--config", str(self.config))

    def teardown(self) -> None:
        if self.db_name:
            with suppress(Exception), pg_admin(self.pg_admin) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        if self.broker_url.startswith("redis"):
            with suppress(Exception):
                import redis

                client = redis.Redis.from_url(self.redis_url)
                keys = list(client.scan_iter(match=f"*{self.namespace}*", count=1000))
                if keys:
                    client.delete(*keys)
                client.close()

    def feed(self, emails: list[tuple[str, bytes]]) -> float:
        """Accept every email through `postdesk smtp` (stub broker: nothing is processed)."""
        log = (self.workdir / "smtp.log").open("w")
        proc = subprocess.Popen([str(self.tree.postdesk), "smtp", "--config",
                                 str(self.feed_config)], stdout=log, stderr=log,
                                env=child_env(), cwd=self.workdir)
        try:
            wait_for_port(self.smtp_port, proc, self.workdir / "smtp.log",
                          what="postdesk smtp", interval=0.1)
            started = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=60) as client:
                for sender, raw in emails:
                    client.sendmail(sender, [SUPPORT], raw)
            return time.perf_counter() - started
        finally:
            stop_process(proc)
            log.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.backend == "sqlite":
            with sqlite3.connect(self.workdir / "postdesk.db") as conn:
                return list(conn.execute(sql))
        import psycopg

        with psycopg.connect(self.pg_conninfo(), autocommit=True) as conn:
            return list(conn.execute(sql))

    def pg_conninfo(self) -> str:
        return pg_database_url(self.pg_admin, self.db_name, "postgresql")


@contextmanager
def pg_admin(url: str) -> Iterator[Any]:
    import psycopg

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                           autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def private_desk(args: argparse.Namespace, tree: Tree, backend: str, broker_url: str,
                 worker_prefetch: int | None = 2) -> Iterator[Desk]:
    workdir = Path(tempfile.mkdtemp(prefix="pdbench-"))
    desk = Desk(tree, workdir, backend, broker_url, args.pg_admin_url, args.redis_url,
                args.worker_threads, worker_prefetch)
    try:
        desk.setup()
        yield desk
    finally:
        desk.teardown()
        if args.keep:
            print(f"  kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run_child(tree: Tree, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(tree.python), str(SCRIPT), "--tree", str(tree.path), *args],
                          capture_output=True, text=True, env=child_env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return proc


def emails_for(n: int, senders: int, tag: str) -> list[tuple[str, bytes]]:
    return [make_email(i, i % senders, tag) for i in range(n)]


# --- part 1 ---------------------------------------------------------------------------------

def measure_locks(args: argparse.Namespace, tree: Tree, backend: str) -> dict[str, Any]:
    with private_desk(args, tree, backend, "stub://") as desk:
        tag = uuid.uuid4().hex[:6]
        feed_s = desk.feed(emails_for(args.lock_emails + args.warmup, 1, tag))
        out = desk.workdir / "locks.json"
        run_child(tree, "--_child", "locks", "--_config", str(desk.config), "--_out",
                  str(out), "--warmup", str(args.warmup))
        result: dict[str, Any] = json.loads(out.read_text())
        result["feed_s"] = feed_s
        return result


LOCK_ROWS: list[tuple[str, str]] = [
    ("processing tx BEGIN->COMMIT (raw_messages FOR UPDATE)", "proc_tx_ms"),
    ("all tx of the email's jobs, summed", "tx_ms"),
    ("  number of transactions", "n_tx"),
    ("lock held (PG: FOR UPDATE->commit; SQLite: write lock)", "lock_ms"),
    ("first write (INSERT/UPDATE/DELETE) -> commit", "write_ms"),
    ("contacts row lock (flood check FOR UPDATE->commit)", "contacts_ms"),
    ("render+compose, total", "render_ms"),
    ("render+compose inside a transaction", "render_in_tx_ms"),
    ("render+compose while a lock is held", "render_locked_ms"),
    ("processing job wall time", "job_ms"),
    ("(outbox send jobs: tx time, not counted above)", "send_tx_ms"),
    ("share: lock held / all tx", "share_locked"),
    ("share: render+compose in tx / all tx", "share_render"),
    ("share: lock held / job wall time", "share_locked_job"),
]


def print_locks(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n1. Lock hold per email - one sender, {args.lock_emails} emails processed one at a "
          f"time by 1 worker thread (first {args.warmup} = warm-up, excluded); median / p95")
    head = f"{'metric':58}" + "".join(f"{r['backend'][:8] + ' med':>14}{'p95':>9}"
                                      for r in results)
    print_head(head)
    for label, key in LOCK_ROWS:
        cells = ""
        for r in results:
            values = [e[key] for e in r["per_email"] if e[key] is not None]
            if not values:
                cells += f"{'-':>14}{'-':>9}"
            elif key.startswith("share"):
                cells += f"{statistics.median(values) * 100:>13.0f}%{pct(values, 95) * 100:>8.0f}%"
            elif key == "n_tx":
                cells += f"{statistics.median(values):>14.0f}{pct(values, 95):>9.0f}"
            else:
                cells += f"{statistics.median(values):>14.1f}{pct(values, 95):>9.1f}"
        print(f"{label:58}{cells}")
    for r in results:
        actors = sorted({a for e in r["per_email"] for a in e["actors"]})
        statuses = ", ".join(f"{s}{'/' + why if why else ''} {n}" for s, why, n in r["statuses"])
        outbox = ", ".join(f"{t}/{s} {n}" for t, s, n in r["outbox"])
        print(f"  {r['backend']}: raw messages: {statuses}; outbox: {outbox}; jobs per email: "
              f"{', '.join(actors)}; {r['emails'] / r['elapsed_s']:.1f} emails/s sequential")
        held = [e["contacts_ms"] for e in r["per_email"] if e["contacts_ms"]]
        if held:
            print(f"  {r['backend']}: one sender's emails take its contacts row lock in turn: at "
                  f"most {1000 / statistics.median(held):.0f} emails/s for one sender, "
                  "whatever the number of workers")
    if results:
        print(f"  code: {results[0]['used']}")


# --- part 2 ---------------------------------------------------------------------------------

@dataclass
class E2E:
    senders: int
    workers: int
    emails: int
    feed_s: float
    done_s: float | None
    sent_s: float | None
    statuses: str
    load: float = 0.0      # 1-minute load average when the run started
    lock_waiters: float | None = None   # mean backends waiting on a lock until done
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.emails / self.done_s if self.done_s else None


def wait_for_workers(desk: Desk, procs: list[subprocess.Popen[Any]], logs: list[Path]) -> None:
    """Until every worker logged that it runs (CLI: "postdesk worker running")."""
    deadline = time.monotonic() + 60
    pending = set(range(len(procs)))
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            if procs[i].poll() is not None:
                raise RuntimeError(f"worker {i} exited:\n{logs[i].read_text()[-3000:]}")
            if "running" in logs[i].read_text():
                pending.discard(i)
        time.sleep(0.1)
    time.sleep(1.0)   # consumer threads connect to Redis after the log line


def measure_e2e(args: argparse.Namespace, tree: Tree, senders: int, workers: int) -> E2E:
    load = os.getloadavg()[0]
    with private_desk(args, tree, "postgres", args.redis_url) as desk:
        tag = uuid.uuid4().hex[:6]
        feed_s = desk.feed(emails_for(args.emails, senders, tag))
        procs: list[subprocess.Popen[Any]] = []
        logs: list[Path] = []
        try:
            for i in range(workers):
                logs.append(desk.workdir / f"worker{i}.log")
                with logs[-1].open("w") as fh:
                    procs.append(subprocess.Popen(
                        [str(tree.postdesk), "worker", "--config", str(desk.config)],
                        stdout=fh, stderr=fh, env=child_env(), cwd=desk.workdir))
            wait_for_workers(desk, procs, logs)
            enqueuer = subprocess.Popen(
                [str(tree.python), str(SCRIPT), "--tree", str(tree.path), "--_child",
                 "enqueue", "--_config", str(desk.config)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
            done_at = sent_at = None
            waiters: list[int] = []   # sampled from the first processed email until done
            deadline = time.time() + args.timeout
            import psycopg

            with psycopg.connect(desk.pg_conninfo(), autocommit=True) as conn:
                while time.time() < deadline and sent_at is None:
                    now = time.time()
                    row = conn.execute(
                        "SELECT (SELECT COUNT(*) FROM raw_messages WHERE status = 'pending'),"
                        " (SELECT COUNT(*) FROM tickets),"
                        " (SELECT COUNT(*) FROM outbox WHERE template = 'acknowledgement'),"
                        " (SELECT COUNT(*) FROM outbox WHERE status IN ('queued', 'sending')),"
                        " (SELECT COUNT(*) FROM pg_stat_activity WHERE datname ="
                        "  current_database() AND wait_event_type = 'Lock')"
                    ).fetchone()
                    assert row is not None
                    pending, tickets, acks, unsent, waiting = row
                    if done_at is None and pending < args.emails:
                        waiters.append(waiting)
                    if done_at is None and pending == 0 and acks >= tickets and tickets:
                        done_at = now
                    if done_at is not None and unsent == 0:
                        sent_at = now
                    time.sleep(0.05)
            out, err = enqueuer.communicate(timeout=120)
            if enqueuer.returncode != 0:
                raise RuntimeError(f"enqueue child failed:\n{err[-3000:]}")
            t0 = json.loads(out.strip().splitlines()[-1])["t0"]
        finally:
            for proc in procs:
                stop_process(proc)
        statuses = ", ".join(f"{s}{'/' + why if why else ''} {n}" for s, why, n in desk.query(
            "SELECT status, COALESCE(reason, ''), COUNT(*) FROM raw_messages GROUP BY 1, 2 "
            "ORDER BY 1, 2"))
        return E2E(senders, workers, args.emails, feed_s,
                   done_at - t0 if done_at else None, sent_at - t0 if sent_at else None,
                   statuses, load, statistics.mean(waiters) if waiters else None,
                   "" if done_at else f"not done after {args.timeout}s")


def print_e2e(rows: list[E2E], args: argparse.Namespace) -> None:
    print(f"\n2. Workers scaling, end to end on PostgreSQL + Redis: {args.emails} emails, "
          f"k `postdesk worker` processes x {args.worker_threads} thread(s)")
    head = (f"{'senders':>7} {'k':>3} {'emails':>6} {'done s':>8} {'emails/s':>9} "
            f"{'all sent s':>10} {'feed s':>7} {'load':>5} {'lock-wait':>9}  raw messages")
    print_head(head)
    for r in sorted(rows, key=lambda r: (r.senders, r.workers)):
        print(f"{r.senders:>7} {r.workers:>3} {r.emails:>6} {fmt_ms(r.done_s):>8} "
              f"{fmt_ms(r.rate):>9} {fmt_ms(r.sent_s):>10} {r.feed_s:>7.1f} {r.load:>5.2f} "
              f"{'-' if r.lock_waiters is None else f'{r.lock_waiters:.2f}':>9}  "
              f"{r.statuses}{'  ' + r.note if r.note else ''}")
    print("  load: 1-min load average at the start; lock-wait: mean number of database sessions "
          "waiting on a lock (pg_stat_activity, sampled every 50 ms until done)")
    print("  summary (best of the repeats: other load on the machine only ever slows a run):")
    for senders in sorted({r.senders for r in rows}):
        best: dict[int, float] = {}
        for r in rows:
            if r.senders == senders and r.rate:
                best[r.workers] = max(best.get(r.workers, 0.0), r.rate)
        ks = sorted(best)
        line = ", ".join(f"k={k} {best[k]:.1f} emails/s" for k in ks)
        if len(ks) >= 2:
            line += f"; k={ks[-1]}/k={ks[0]} = {best[ks[-1]] / best[ks[0]]:.2f}x"
        print(f"  {senders} sender(s): {line}")


# --- main -----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Lock hold per inbound email and worker scaling "
                                "with one sender (see the module docstring).")
    p.add_argument("--tree", type=Path, default=DEFAULT_TREE,
                   help="checkout to measure (default: the repository holding this script)")
    p.add_argument("--emails", type=int, default=300, help="emails per end-to-end run")
    p.add_argument("--lock-emails", type=int, default=200, help="emails measured in part 1")
    p.add_argument("--warmup", type=int, default=5, help="part 1 emails left out")
    p.add_argument("--workers", default="1,4", help="worker process counts (part 2)")
    p.add_argument("--senders", default="1,5", help="sender counts (part 2)")
    p.add_argument("--worker-threads", type=int, default=1,
                   help="desk.worker_threads of each worker process (part 2)")
    p.add_argument("--backends", default="sqlite,postgres", help="part 1 databases")
    p.add_argument("--skip-locks", action="store_true", help="skip part 1")
    p.add_argument("--skip-e2e", action="store_true", help="skip part 2")
    p.add_argument("--repeat", type=int, default=2, help="runs of each part 2 variant")
    p.add_argument("--timeout", type=float, default=300, help="max seconds per e2e run")
    p.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, configs)")
    p.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    # Internal: the child processes (run with the tree's python).
    p.add_argument("--_child", choices=["locks", "enqueue"], help=argparse.SUPPRESS)
    p.add_argument("--_config", help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tree = Tree(args.tree.resolve())
    reexec_in_tree(tree)
    if args._child == "locks":
        child_locks(args._config, args._out, args.warmup)
        return 0
    if args._child == "enqueue":
        child_enqueue(args._config)
        return 0
    require_loopback(args.pg_admin_url, "--pg-admin-url")
    require_loopback(args.redis_url, "--redis-url")
    print(f"postdesk pipeline locks - tree {tree.describe()}")
    print(f"{python_line(executable=True)}, {datetime.now(UTC).isoformat(timespec='seconds')}")
    report: dict[str, Any] = {"tree": str(tree.path)}
    if not args.skip_locks:
        results = []
        for backend in args.backends.split(","):
            print(f"  part 1: {backend} ...", file=sys.stderr, flush=True)
            try:
                results.append(measure_locks(args, tree, backend.strip()))
            except Exception as exc:
                print(f"  part 1 on {backend} failed: {exc}", file=sys.stderr)
        print_locks(results, args)
        report["locks"] = results
    if not args.skip_e2e:
        rows: list[E2E] = []
        # Interleaved repeats, so slow phases of a shared machine hit every variant alike.
        runs = [(int(s), int(k)) for _ in range(args.repeat) for s in args.senders.split(",")
                for k in args.workers.split(",")]
        for senders, workers in runs:
            print(f"  part 2: {senders} sender(s), k={workers} ...", file=sys.stderr, flush=True)
            try:
                rows.append(measure_e2e(args, tree, senders, workers))
            except Exception as exc:
                print(f"  part 2 ({senders} senders, k={workers}) failed: {exc}",
                      file=sys.stderr)
        print_e2e(rows, args)
        report["e2e"] = [asdict(r) | {"rate": r.rate} for r in rows]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
