"""``postdesk import mbox|maildir|eml PATH...``: old mail through the same door and the
same pipeline as live mail, synchronously, so the summary is exact.

Each message is ``accept``-ed (committed, de-duplicated by sha256) without a queue job,
then processed right here with ``process_inbound``; only the email that processing
writes goes to the queue, for the workers to send. Imports do not notify anyone unless
asked (``notify=False`` also makes the pipeline keep the email's own Date as the ticket's
time). Re-running an import finds every message already accepted and counts it as a
duplicate; one interrupted half-way picks up the messages still pending.

Every input message (or unreadable file) is counted exactly once in the summary:
``total = tickets_created + replies_threaded + duplicates + sum(quarantined) + failed``.
``quarantined`` is keyed by reason and also counts mail that was dealt with but made no
ticket content (e.g. ``no_ticket``); ``failed`` counts inputs that could not be read at
all, each named on stderr."""

from __future__ import annotations

import mailbox
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from postdesk.ingest.accept import Envelope, accept
from postdesk.storage.models import Message, RawMessage, RawStatus
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.pipeline.builtin import BUILTIN, Pipeline
from postdesk.workflow.pipeline.process import process_inbound
from postdesk.workflow.pipeline.runner import PipelineResult

Kind = Literal["mbox", "maildir", "eml"]
KINDS: tuple[str, ...] = ("mbox", "maildir", "eml")
TRANSIENT_RETRIES = 4
HEADER_PEEK_BYTES = 64 * 1024   # enough for any sane header block


class SourceError(Exception):
    """An input file or message that cannot be read."""


@dataclass
class ImportSummary:
    total: int = 0
    tickets_created: int = 0
    replies_threaded: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    # Seconds per stage, for the benchmark; not part of the JSON summary.
    timings: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "tickets_created": self.tickets_created,
                "replies_threaded": self.replies_threaded, "duplicates": self.duplicates,
                "quarantined": dict(sorted(self.quarantined.items())), "failed": self.failed}

    def describe(self) -> str:
        quarantined = sum(self.quarantined.values())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.quarantined.items()))
        return (f"{self.total} inputs: {self.tickets_created} tickets created, "
                f"{self.replies_threaded} replies threaded, {self.duplicates} duplicates, "
                f"{quarantined} quarantined{f' ({reasons})' if reasons else ''}, "
                f"{self.failed} failed")


# --- reading the inputs -------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One input message: ``read()`` returns its bytes (or raises OSError)."""

    label: str
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Source:
    """One PATH argument: its messages, or the error that makes it unreadable."""

    path: str
    items: list[Item]
    error: str | None = None


def open_source(kind: str, path: str) -> Source:
    try:
        if kind == "mbox":
            return Source(path, _mbox_items(Path(path)))
        if kind == "maildir":
            return Source(path, _maildir_items(Path(path)))
        if kind == "eml":
            return Source(path, _eml_items(Path(path)))
    except (OSError, mailbox.Error, SourceError) as exc:
        return Source(path, [], error=_reason(exc))
    raise ValueError(f"unknown import kind {kind!r} (use {', '.join(KINDS)})")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _mbox_items(path: Path) -> list[Item]:
    if not path.is_file():
        raise SourceError("not an mbox file" if path.exists() else "no such file")
    box = mailbox.mbox(path, create=False)
    keys = box.keys()   # scans the file once for "From " lines
    # An mbox is read-only here: mailbox.mbox locks nothing and changes nothing unless asked.
    return [Item(f"{path}#{n + 1}", _reader(box, key)) for n, key in enumerate(keys)]


def _maildir_items(path: Path) -> list[Item]:
    if not (path / "cur").is_dir() or not (path / "new").is_dir():
        raise SourceError("not a maildir (no cur/ and new/)" if path.exists()
                          else "no such directory")
    # Read the files directly: a maildir message is one file in new/ or cur/, and
    # dot-files (Dovecot's indexes, tmp names) are not messages.
    files = [p for sub in ("new", "cur") for p in (path / sub).iterdir()
             if p.is_file() and not p.name.startswith(".")]
    return [Item(str(f), f.read_bytes) for f in _in_date_order(files)]


def _eml_items(path: Path) -> list[Item]:
    if path.is_dir():
        # Hidden files (.DS_Store and the like) are not mail.
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    elif path.exists():
        files = [path]
    else:
        raise SourceError("no such file")
    return [Item(str(f), f.read_bytes) for f in _in_date_order(files)]


def _in_date_order(files: list[Path]) -> list[Path]:
    """By each file's Date header, then by name. A maildir or a folder of .eml files has
    no order of its own, and a reply must be processed after the email it answers to
    thread onto its ticket."""
    return sorted(files, key=lambda f: (_date_of(f), str(f)))


def _date_of(path: Path) -> float:
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_PEEK_BYTES)
        value = BytesHeaderParser().parsebytes(head).get("Date")
        return parsedate_to_datetime(str(value)).timestamp() if value else float("inf")
    except (OSError, TypeError, ValueError, IndexError):
        return float("inf")   # unreadable or undated: last, and named if it fails later


def _reader(box: mailbox.Mailbox[Any], key: str) -> Callable[[], bytes]:
    return lambda: box.get_bytes(key)


# --- importing ----------------------------------------------------------------------------

Outcome = Literal["ticket_created", "reply_threaded", "duplicate", "quarantined", "failed"]


class Importer:
    """``pipeline``: the built-in one unless given (the benchmark hands in the same steps
    wrapped to time them)."""

    def __init__(self, services: Services, dispatch: Dispatch, kind: str, *,
                 notify: bool = False, warn: Callable[[str], None] | None = None,
                 pipeline: Pipeline = BUILTIN):
        if kind not in KINDS:
            raise ValueError(f"unknown import kind {kind!r} (use {', '.join(KINDS)})")
        self.services = services
        self.dispatch = dispatch
        self.kind = kind
        self.notify = notify
        self.warn = warn or (lambda text: print(text, file=sys.stderr))
        self.summary = ImportSummary()
        self.pipeline = pipeline

    def sources(self, paths: list[str]) -> list[Source]:
        return [open_source(self.kind, p) for p in paths]

    def run(self, sources: list[Source],
            on_item: Callable[[ImportSummary], None] | None = None) -> ImportSummary:
        for source in sources:
            if source.error is not None:
                self.warn(f"postdesk import: cannot read {source.path}: {source.error}")
                self._count("failed")
                if on_item:
                    on_item(self.summary)
                continue
            for item in source.items:
                self.import_item(item)
                if on_item:
                    on_item(self.summary)
        return self.summary

    def import_item(self, item: Item) -> Outcome:
        timings = self.summary.timings
        started = time.perf_counter()
        try:
            raw = item.read()
        except (OSError, mailbox.Error, KeyError) as exc:
            self.warn(f"postdesk import: cannot read {item.label}: {_reason(exc)}")
            return self._count("failed")
        timings["read"] += time.perf_counter() - started

        started = time.perf_counter()
        # The door itself, not App.accept: no queue job, this process handles the message.
        services = self.services
        accepted = accept(services.sessions, services.blobs, raw,
                          Envelope(mail_from=None, rcpt_tos=()), f"import:{self.kind}",
                          now=services.now(), notify=self.notify)
        timings["accept"] += time.perf_counter() - started
        # Accepted before but never processed (an import interrupted half-way): do it now.
        if not accepted.created and accepted.status != RawStatus.PENDING:
            return self._count("duplicate")

        started = time.perf_counter()
        result = self._process(accepted.raw_id)
        timings["process"] += time.perf_counter() - started
        for outbox_id in result.outbox_ids if result is not None else ():
            self.dispatch.outbox(outbox_id)
        if result is not None and result.status == RawStatus.PROCESSED and result.ticket_id:
            return self._count("ticket_created" if result.created_ticket else "reply_threaded")
        return self._classify(item, accepted.raw_id)

    def _process(self, raw_id: int) -> PipelineResult | None:
        # process_inbound re-raises only transient database errors (a busy SQLite, say,
        # while `postdesk serve` writes): wait a little and try again, then give up loudly.
        for attempt in range(TRANSIENT_RETRIES):
            try:
                return process_inbound(self.services, raw_id, self.pipeline)
            except OperationalError:
                if attempt == TRANSIENT_RETRIES - 1:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        return None

    def _classify(self, item: Item, raw_id: int) -> Outcome:
        """The outcome from the raw message's row: for mail processed elsewhere (a worker
        got there first) or that made no ticket content."""
        with self.services.sessions() as session:
            raw = session.get(RawMessage, raw_id)
            assert raw is not None
            status, reason, ticket_id = raw.status, raw.reason, raw.ticket_id
            first_raw = None
            if status == RawStatus.PROCESSED and ticket_id is not None:
                # The message that opened a ticket is its first inbound message.
                first_raw = session.scalar(
                    select(Message.raw_id).where(Message.ticket_id == ticket_id,
                                                 Message.direction == "in")
                    .order_by(Message.id).limit(1))
        if status == RawStatus.DUPLICATE:
            return self._count("duplicate")
        if status == RawStatus.PROCESSED and ticket_id is not None:
            return self._count("ticket_created" if first_raw == raw_id else "reply_threaded")
        if status == RawStatus.PENDING:
            # process_inbound gave up on a transient error (database busy or down).
            self.warn(f"postdesk import: {item.label}: not processed (raw message {raw_id} "
                      "is still pending; `postdesk serve` will process it later)")
            return self._count("failed")
        # Quarantined, or dealt with without ticket content: counted by reason.
        return self._count("quarantined", reason or status)

    def _count(self, outcome: Outcome, reason: str = "") -> Outcome:
        s = self.summary
        s.total += 1
        if outcome == "ticket_created":
            s.tickets_created += 1
        elif outcome == "reply_threaded":
            s.replies_threaded += 1
        elif outcome == "duplicate":
            s.duplicates += 1
        elif outcome == "quarantined":
            s.quarantined[reason] += 1
        else:
            s.failed += 1
        return outcome


def count_inputs(sources: list[Source]) -> int:
    """How many summary entries the sources make: one per message, one per bad file."""
    return sum(len(s.items) if s.error is None else 1 for s in sources)


def import_paths(services: Services, dispatch: Dispatch, kind: str, paths: list[str], *,
                 notify: bool = False, progress: bool = True) -> ImportSummary:
    """Import with a rich progress bar on stderr (counts as they happen)."""
    importer = Importer(services, dispatch, kind, notify=notify)
    sources = importer.sources(paths)
    if not progress:
        return importer.run(sources)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        # Logs and CI: rich draws the bar once at the end; give it room for the counts.
        console = Console(stderr=True, width=160)
    # soft_wrap: a file name on stderr must stay on one line for grep and scripts.
    importer.warn = lambda text: console.print(text, style="red", markup=False,
                                               highlight=False, soft_wrap=True)
    columns = (TextColumn("{task.fields[kind]}"), BarColumn(bar_width=30), MofNCompleteColumn(),
               TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("import", total=count_inputs(sources), kind=kind,
                            counts=_counts(importer.summary))

        def advance(summary: ImportSummary) -> None:
            bar.update(task, completed=summary.total, counts=_counts(summary))

        summary = importer.run(sources, on_item=advance)
    console.print(summary.describe(), markup=False, highlight=False, soft_wrap=True)
    return summary


def _counts(s: ImportSummary) -> str:
    return (f"tickets {s.tickets_created} replies {s.replies_threaded} "
            f"duplicates {s.duplicates} quarantined {sum(s.quarantined.values())} "
            f"failed {s.failed}")
