"""CPU per new ticket, in-process: one generated 2 KB email from its own sender, accepted
and processed (``accept`` + ``process_inbound``) with no workers, its acknowledgement and
the staff notification rendered and composed. On SQLite (the embedded default), or with
``--database postgres`` on a fresh PostgreSQL database (``$POSTDESK_TEST_POSTGRES_URL`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres`` as admin; dropped afterwards):
the same work, to see what the database driver and server round trips add.

Run from the repository root::

    .venv/bin/python bench/bench_ticket_cpu.py [--emails 500] [--profile 25]
    .venv/bin/python bench/bench_ticket_cpu.py --profile 25 --profile-out /tmp/ticket.prof
    .venv/bin/python bench/bench_ticket_cpu.py --tree /path/to/other/checkout
    .venv/bin/python bench/bench_ticket_cpu.py --database postgres --sends

``--tree`` measures another checkout's code (same layout) with this script and this
venv's libraries, so two trees compare in one sitting. ``--profile N`` adds a cProfile run
of the same work: Python function calls per ticket (a measure of work that does not move
with the machine's load) and the N functions with the most own and cumulative time.

Printed, per new ticket (CPU time of this process, ``time.process_time``; there are no
other threads):

* the work alone ("the same work, unmetered"): the same emails on a fresh database with
  no stage meter and no statement listener, which cost CPU of their own (~0.7 ms per
  ticket); the figure the acceptance target is about. Then the metered run:

* stages: ``accept`` (blob + raw row committed), the pipeline's ``parse`` step, the other
  checks, the record handlers, the notify steps (queueing drafts), ``drafts`` (after
  commit: reading the drafts and storing the composed bytes, without the two next),
  ``render`` (jinja2, both emails), ``compose`` (MIME, both emails), and the rest of
  ``process_inbound`` (sessions, reading the raw message, claim, commit);
* SQL statements per email (a ``before_cursor_execute`` listener on the engine), for
  accept and processing, by statement kind and table; ORM flushes per email;
* baselines in the same run: mail-parser parsing the same emails alone, and the standard
  library (``email.mime``, compat32) composing the same two outgoing emails from the same
  rendered bodies and header values.

``--sends``: then each ticket's two emails are sent as the worker sends them (one send job
per ticket, to the local maildir): CPU and Python function calls per job.

Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import logging
import os
import pstats
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"postdesk": "postdesk", "ingest": "ingest", "mail": "mail",
            "outbound": "outbound", "storage": "storage", "templates": "templates",
            "workflow": "workflow"}


def use_tree(tree: Path) -> Path:
    """Make ``import postdesk.*`` load ``tree``'s code: a farm of symlinks laid out as the
    installed package (``postdesk/mail`` -> ``tree/mail`` ...), first on sys.path (the
    editable install's finder comes after the path finder)."""
    farm = Path(tempfile.mkdtemp(prefix="pd-bench-tree-"))
    pkg = farm / "postdesk"
    pkg.mkdir()
    for entry in (tree / "postdesk").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for name, folder in PACKAGES.items():
        if name != "postdesk" and not (pkg / name).exists():
            (pkg / name).symlink_to(tree / folder)
    sys.path.insert(0, str(farm))
    return farm


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--body-bytes", type=int, default=2048)
    parser.add_argument("--tree", type=Path, default=None,
                        help="measure this checkout's code instead of the script's own")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--sends", action="store_true",
                        help="also send each ticket's two emails (one send job per ticket) "
                             "to the local maildir: CPU and Python function calls per job")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile the work and print the top N by own time")
    parser.add_argument("--profile-out", type=Path, default=None, metavar="FILE",
                        help="with --profile: also write the cProfile stats to FILE "
                             "(for pstats, snakeviz...)")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
FARM = use_tree(ARGS.tree.resolve()) if ARGS is not None and ARGS.tree else None
sys.path.insert(1, str(ROOT))   # tests.support, tests.mailgen

import mailparser  # noqa: E402
from sqlalchemy import event, func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import postdesk  # noqa: E402
from postdesk.app import App  # noqa: E402
from postdesk.ingest.accept import Envelope  # noqa: E402
from postdesk.storage.models import Outbox, RawMessage, Ticket  # noqa: E402
from postdesk.workflow.desk import outbox as outbox_module  # noqa: E402
from postdesk.workflow.pipeline import process as process_module  # noqa: E402
from postdesk.workflow.pipeline.builtin import BUILTIN, Pipeline  # noqa: E402
from postdesk.workflow.pipeline.process import process_inbound  # noqa: E402
from postdesk.workflow.pipeline.runner import Step  # noqa: E402
from postdesk.workflow.rules.clock import ManualClock  # noqa: E402
from postdesk.workflow.rules.config import parse_config  # noqa: E402
from tests.support import (  # noqa: E402
    Backend,
    backend,
    config_text,
    make_email,
    postgres_database,
)

# A Tuesday morning in office hours, so every SLA clock is computed the same way each run.
START = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
WORDS = ("the", "checkout", "page", "shows", "an", "error", "after", "the", "payment",
         "step", "and", "customers", "cannot", "finish", "their", "orders", "since",
         "this", "morning", "please", "have", "a", "look")
STAGES = ("accept", "parse", "checks", "record", "notify", "drafts", "render", "compose",
          "tx+rest")


def body_text(i: int, size: int) -> str:
    lines, line, total = [], [], 0
    n = i
    while total < size:
        word = WORDS[n % len(WORDS)]
        n += 7
        line.append(word)
        total += len(word) + 1
        if len(line) == 11:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return f"Hello,\n\n{chr(10).join(lines)}\n\nThanks,\nUser {i}\n"


def generate(count: int, size: int, tag: str) -> list[bytes]:
    """``count`` emails, each from its own client contact (so each opens a ticket that is
    acknowledged, and no per-sender limit applies), ~``size`` bytes of text each."""
    return [make_email(sender=f"{tag}{i}@client.example",
                       subject=f"Checkout broken on page {i}", body=body_text(i, size),
                       message_id=f"<{tag}-{i}@client.example>",
                       date=START - timedelta(minutes=1)).as_bytes()
            for i in range(count)]


@contextmanager
def fresh_app() -> Iterator[App]:
    tmp = Path(tempfile.mkdtemp(prefix="pd-bench-cpu-"))
    try:
        with database(tmp) as be, App.open(
                parse_config(config_text(be, tmp / "data"), environ={}),
                clock=ManualClock(START)) as app:
            app.upgrade_database()
            app.sync_directory()
            yield app
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def database(tmp: Path) -> Iterator[Backend]:
    """SQLite in ``tmp``, or a fresh PostgreSQL database; the in-process queue either way."""
    if ARGS is None or ARGS.database == "sqlite":
        with backend("sqlite", tmp) as be:
            yield be
        return
    admin = os.environ.get("POSTDESK_TEST_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    with postgres_database(admin) as url:
        yield Backend("postgres", url, "stub://", "pdbenchcpu")


class Meter:
    """CPU time by stage; the innermost stage running is charged (a stage entered inside
    another is subtracted from the outer one)."""

    def __init__(self) -> None:
        self.cpu: Counter[str] = Counter()
        self.stack: list[list[Any]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        frame = [name, time.process_time(), 0.0]   # name, start, time in inner stages
        self.stack.append(frame)
        try:
            yield
        finally:
            self.stack.pop()
            spent = time.process_time() - frame[1]
            self.cpu[name] += spent - frame[2]
            if self.stack:
                self.stack[-1][2] += spent

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return fn(*args, **kwargs)
        return run


def metered_pipeline(meter: Meter) -> Pipeline:
    def wrap(s: Step[Any], name: str) -> Step[Any]:
        return Step(s.name, meter.wrap(name, s.run))
    return Pipeline(
        checks=[wrap(s, "parse" if s.name == "parse" else "checks") for s in BUILTIN.checks],
        handlers=[wrap(s, "record") for s in BUILTIN.handlers],
        notify=[wrap(s, "notify") for s in BUILTIN.notify], reactions=BUILTIN.reactions)


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", re.IGNORECASE)


class SqlCounter:
    def __init__(self, app: App) -> None:
        self.phase = "idle"
        self.by_phase: Counter[str] = Counter()
        self.kinds: Counter[tuple[str, str]] = Counter()
        self.flushes: Counter[str] = Counter()
        event.listen(app.engine, "before_cursor_execute", self._statement)
        event.listen(Session, "after_flush", self._flush)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.by_phase[self.phase] += 1
        if self.phase == "process":
            verb = statement.lstrip().split(None, 1)[0].upper()
            table = _TABLE.search(statement)
            self.kinds[(verb, table.group(1) if table else "")] += 1

    def _flush(self, session: Session, context: Any) -> None:
        self.flushes[self.phase] += 1

    def close(self, app: App) -> None:
        event.remove(app.engine, "before_cursor_execute", self._statement)
        event.remove(Session, "after_flush", self._flush)


def run_tickets(app: App, raws: list[bytes], meter: Meter | None,
                captured: list[Any] | None = None) -> float:
    """Accept and process each email in turn; the CPU seconds it took."""
    pipeline = metered_pipeline(meter) if meter else BUILTIN
    accept = app.accept
    compose = outbox_module.compose
    render = app.services.renderer.render
    render_drafts = process_module.render_drafts
    if captured is not None:
        def capture(mail: Any) -> bytes:
            captured.append(mail)
            return compose(mail)
        outbox_module.compose = capture  # type: ignore[assignment]
    if meter:
        accept = meter.wrap("accept", accept)
        outbox_module.compose = meter.wrap("compose", outbox_module.compose)  # type: ignore[assignment]
        app.services.renderer.render = meter.wrap("render", render)  # type: ignore[method-assign]
        process_module.render_drafts = meter.wrap("drafts", render_drafts)
    envelope = Envelope
    started = time.process_time()
    try:
        for raw in raws:
            env = envelope(mail_from=None, rcpt_tos=("support@desk.example",))
            result = accept(raw, env, "bench", enqueue=False)
            if meter:
                with meter.stage("tx+rest"):
                    process_inbound(app.services, result.raw_id, pipeline)
            else:
                process_inbound(app.services, result.raw_id, pipeline)
    finally:
        outbox_module.compose = compose  # type: ignore[assignment]
        app.services.renderer.render = render  # type: ignore[method-assign]
        process_module.render_drafts = render_drafts
    return time.process_time() - started


def measure_sends(app: App) -> tuple[int, float, int]:
    """Send the queued emails, one job per ticket, as the worker does: half of the jobs
    timed, the other half counted under cProfile. A tree whose send actor takes one id
    at a time (before one send job per email) is handed the ids one by one. Returns the
    jobs of each half, their CPU seconds, and the function calls of the profiled half."""
    with app.sessions() as s:
        rows = s.execute(select(Outbox.ticket_id, Outbox.id)
                         .where(Outbox.status == "queued").order_by(Outbox.id))
        by_ticket: dict[int, list[int]] = {}
        for ticket_id, outbox_id in rows:
            by_ticket.setdefault(ticket_id, []).append(outbox_id)
    jobs = list(by_ticket.values())
    one_job = "outbox_ids" in inspect.signature(app.handle_outbox).parameters

    def send(job: list[int]) -> None:
        if one_job:
            app.handle_outbox(job)
        else:
            for outbox_id in job:
                app.handle_outbox(outbox_id)  # type: ignore[arg-type]

    half = len(jobs) // 2
    started = time.process_time()
    for job in jobs[:half]:
        send(job)
    cpu = time.process_time() - started
    profiler = cProfile.Profile()
    profiler.enable()
    for job in jobs[half:2 * half]:
        send(job)
    profiler.disable()
    return half, cpu, pstats.Stats(profiler).total_calls  # type: ignore[attr-defined]


def stdlib_compose(mail: Any) -> bytes:
    """The same email with the standard library's compat32 classes: header values as
    plain strings (non-ASCII would need email.header; the generated ones are ASCII)."""
    msg = MIMEMultipart("alternative")
    msg["From"] = formataddr((mail.from_name, mail.from_addr))
    msg["To"] = ", ".join(mail.to)
    if mail.cc:
        msg["Cc"] = ", ".join(mail.cc)
    if mail.reply_to:
        msg["Reply-To"] = formataddr((mail.from_name, mail.reply_to))
    msg["Subject"] = mail.subject
    msg["Date"] = format_datetime(mail.date)
    msg["Message-ID"] = mail.message_id
    if mail.in_reply_to:
        msg["In-Reply-To"] = mail.in_reply_to
    if mail.references:
        msg["References"] = " ".join(mail.references)
    if mail.automatic:
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg.attach(MIMEText(mail.body.text, "plain", "utf-8"))
    if mail.body.html is not None:
        msg.attach(MIMEText(mail.body.html, "html", "utf-8"))
    return msg.as_bytes()


def cpu_of(fn: Callable[[Any], Any], items: list[Any]) -> float:
    started = time.process_time()
    for item in items:
        fn(item)
    return time.process_time() - started


def main() -> None:
    assert ARGS is not None
    logging.basicConfig(level=logging.WARNING)
    n = ARGS.emails
    raws = generate(n, ARGS.body_bytes, "user")
    warm = generate(ARGS.warmup, ARGS.body_bytes, "warm")
    code = Path(postdesk.__file__).resolve().parent.parent
    print(f"code: {ARGS.tree or code}; {n} emails of {sum(map(len, raws)) // n} bytes, each "
          f"from its own sender, after {ARGS.warmup} warm-up emails; {ARGS.database}; "
          f"CPU time of this process")

    # First the work alone: no stage meter, no statement listener (both cost CPU of
    # their own, charged to the ticket in the metered run below). The figure the
    # acceptance target (CPU per new ticket) is about.
    with fresh_app() as app:
        run_tickets(app, warm, None)
        plain = run_tickets(app, raws, None)

    with fresh_app() as app:
        run_tickets(app, warm, None)
        meter = Meter()
        sql = SqlCounter(app)
        captured: list[Any] = []
        original_accept = app.accept

        def accept_phase(*args: Any, **kwargs: Any) -> Any:
            sql.phase = "accept"
            try:
                return original_accept(*args, **kwargs)
            finally:
                sql.phase = "process"
        app.accept = accept_phase  # type: ignore[method-assign]
        total = run_tickets(app, raws, meter, captured)
        app.accept = original_accept  # type: ignore[method-assign]
        sql.close(app)
        with app.sessions() as s:
            tickets = s.scalar(select(func.count(Ticket.id))) or 0
            queued = s.scalar(select(func.count(Outbox.id)).where(Outbox.status == "queued"))
            processed = s.scalar(select(func.count(RawMessage.id)).where(
                RawMessage.status == "processed"))
        sends = measure_sends(app) if ARGS.sends else None

    # Baselines, same emails, same process.
    parse_cpu = cpu_of(mailparser.parse_from_bytes, raws)
    stdlib_cpu = cpu_of(stdlib_compose, captured)
    ours_cpu = cpu_of(outbox_module.compose, captured)

    per = 1000 / n
    print(f"checked: {tickets - ARGS.warmup} tickets, {processed} raw processed, {queued} "
          f"outbox queued ({len(captured)} composed)\n")
    print(f"{'stage':<28}{'ms/ticket':>10}{'share':>8}")
    for name in STAGES:
        print(f"{name:<28}{meter.cpu[name] * per:>10.3f}{meter.cpu[name] / total:>8.1%}")
    print(f"{'TOTAL (accept + process)':<28}{total * per:>10.3f}")
    print(f"{'  the same work, unmetered':<28}{plain * per:>10.3f}   (fresh database, "
          f"no stage meter or statement listener)")
    other = total - sum(meter.cpu.values())
    if abs(other) * per > 0.01:
        print(f"{'(outside stages)':<28}{other * per:>10.3f}")
    print()
    accept_sql, process_sql = sql.by_phase["accept"], sql.by_phase["process"]
    print(f"SQL statements per email: {(accept_sql + process_sql) / n:.1f} "
          f"(accept {accept_sql / n:.1f}, process {process_sql / n:.1f}); "
          f"ORM flushes per email: accept {sql.flushes['accept'] / n:.1f}, "
          f"process {sql.flushes['process'] / n:.1f}")
    for (verb, table), count in sorted(sql.kinds.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {count / n:5.2f}  {verb} {table}")
    print()
    print("baselines, same run (CPU ms per email / per ticket):")
    print(f"  {'mail-parser parse_from_bytes alone':<44}{parse_cpu * per:>8.3f}   ticket = "
          f"{total / parse_cpu:.1f}x")
    print(f"  {'stdlib email.mime compose, both emails':<44}{stdlib_cpu * per:>8.3f}")
    print(f"  {'postdesk compose, both emails':<44}{ours_cpu * per:>8.3f}   = "
          f"{ours_cpu / stdlib_cpu:.2f}x stdlib")

    if sends is not None:
        jobs, cpu, calls = sends
        print(f"\nsend jobs (each ticket's acknowledgement and staff notification, to the "
              f"maildir): {jobs} jobs, {1000 * cpu / jobs:.3f} ms CPU and "
              f"{calls / jobs:,.0f} Python function calls per job")

    if ARGS.profile:
        raws2 = generate(n, ARGS.body_bytes, "prof")
        with fresh_app() as app:
            run_tickets(app, warm, None)
            profiler = cProfile.Profile()
            profiler.enable()
            run_tickets(app, raws2, None)
            profiler.disable()
        if ARGS.profile_out is not None:
            profiler.dump_stats(ARGS.profile_out)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        # A measure of work that does not move with the machine's load.
        print(f"\nprofiled run: {stats.total_calls / n:,.0f} Python function calls per "  # type: ignore[attr-defined]
              f"ticket")
        stats.sort_stats("tottime").print_stats(ARGS.profile)
        stats.sort_stats("cumulative").print_stats(ARGS.profile)
        print(out.getvalue())
    if FARM is not None:
        shutil.rmtree(FARM, ignore_errors=True)


if __name__ == "__main__":
    main()
