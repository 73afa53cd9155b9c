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
all, each named on stderr.

Messages are read and accepted in batches (``BATCH_MESSAGES`` messages or ``BATCH_BYTES``,
whichever comes first): the blobs of the batch's emails too large to travel in their row
(``desk.raw_in_database_bytes``) are published durably side by side (their fsyncs overlap
in a few threads), then one synced transaction inserts every new row, small emails' bytes
in it (``INSERT ... ON CONFLICT (sha256) DO NOTHING RETURNING``). Then the batch is recorded
``--batch N`` emails (``PER_TRANSACTION``) at a time, each N in ONE transaction, in input
order (``workflow.pipeline.batch``; a batch in which one email needs undoing is recorded
again with each email in a savepoint of its own): an email that fails is quarantined
alone, and the drafts are rendered, then handed to the sender, only once their
transaction has committed. A crash anywhere leaves either nothing but
blobs (the re-run accepts them again) or committed ``pending`` rows with nothing of their
processing (the re-run processes them); nothing is created twice. ``--batch 1`` records
each email in its own transactions, as live mail.

Helper processes (``--workers N``; by default one, with two CPUs or more and an import
of ``AUTO_MIN_MESSAGES`` messages or more) do the pure work of the import while this
process accepts and records:

- they parse ahead (``parse_email`` and the visible reply text, both pure functions of
  the bytes), one transaction's part ahead of the part being recorded (the next batch
  is read ahead for its first part, so two batches are held at most): the pipeline's
  ``parse`` step then takes the ready result, or parses itself when it is not ready (or
  failed, or the helper died);
- they render and compose each draft as soon as it is queued (``outbox.render_job``, a
  function of the draft and the ticket as it was when queued): once the transaction has
  committed, the rendering is taken from the helper, or made here when the helper failed
  on it or died. Storing it (and recording the email on its ticket) stays here, after
  commit, in order, as without a helper.

So every outcome and every email is the same with helpers or without."""

from __future__ import annotations

import dataclasses
import mailbox
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from postdesk.helper_processes import HelperGone, HelperPool, can_fork
from postdesk.ingest.accept import AcceptResult, Envelope, accept_many
from postdesk.mail.classify import Classification, classify
from postdesk.mail.parse import ParsedEmail, UnparseableEmail, parse_email
from postdesk.mail.reply_text import visible_reply
from postdesk.storage.blobs import sha256_hex
from postdesk.storage.models import Message, RawMessage, RawStatus, Ticket
from postdesk.workflow.desk import history
from postdesk.workflow.desk.outbox import DraftRow, RenderJob, render_job
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.desk.tickets import dedupe_key
from postdesk.workflow.pipeline.batch import NOTHING_FORESEEN, Foreseen, process_batch
from postdesk.workflow.pipeline.builtin import BUILTIN, Pipeline
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.process import process_inbound
from postdesk.workflow.pipeline.runner import PipelineResult, Quarantine, Step

Kind = Literal["mbox", "maildir", "eml"]
KINDS: tuple[str, ...] = ("mbox", "maildir", "eml")
TRANSIENT_RETRIES = 4
HEADER_PEEK_BYTES = 64 * 1024   # enough for any sane header block
BATCH_MESSAGES = 200            # messages read and accepted in one transaction ...
BATCH_BYTES = 32 * 1024 * 1024  # ... and at most this many bytes of them (the next batch,
                                # read ahead, is held too)
# Emails recorded in one transaction (``--batch``). More are faster (fewer transactions;
# on PostgreSQL fewer synced commits), but on SQLite the record transaction holds the
# database's write lock: a `postdesk serve` on the same database waits for one to accept
# mail (100 plain emails: about a second on two cores).
PER_TRANSACTION = 100
BLOB_THREADS = 8                # blobs published at once (their fsyncs overlap)
AHEAD_CHUNK = 25                # messages parsed ahead per job of the parsing process
AHEAD_MAX_BYTES = 1024 * 1024   # larger messages are parsed by the pipeline itself
RENDER_CHUNK = 16               # drafts rendered per job of a helper
# How long a helper's rendering is waited for once its transaction has committed (it is
# normally ready: the helper renders while the rest of the batch is recorded).
RENDER_WAIT_S = 60.0
# A helper by default from this many messages. Forking it and its first chunk take about
# 60 ms before the first result (13 ms of this process's CPU); it then saves this process
# about 1.5 ms per 2 KB email. Below a couple of chunks there is little to save.
AUTO_MIN_MESSAGES = 50


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
    wrapped to time them). ``batch_messages``/``batch_bytes``: how many messages are
    accepted in one transaction (1: one by one, as live mail). ``per_transaction``: how
    many of them are recorded in one (at most a batch; 1: each email in its own
    transactions, as live mail). ``workers``: helper processes that parse and render
    ahead (0: all in this process; None: ``default_workers``)."""

    def __init__(self, services: Services, dispatch: Dispatch, kind: str, *,
                 notify: bool = False, warn: Callable[[str], None] | None = None,
                 pipeline: Pipeline = BUILTIN, batch_messages: int = BATCH_MESSAGES,
                 batch_bytes: int = BATCH_BYTES, per_transaction: int = PER_TRANSACTION,
                 workers: int | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown import kind {kind!r} (use {', '.join(KINDS)})")
        self.services = services
        self.dispatch = dispatch
        self.kind = kind
        self.notify = notify
        self.warn = warn or (lambda text: print(text, file=sys.stderr))
        self.summary = ImportSummary()
        self.pipeline = pipeline
        self.batch_messages = max(1, batch_messages)
        self.batch_bytes = batch_bytes
        self.per_transaction = max(1, per_transaction)
        self._pool: ThreadPoolExecutor | None = None
        self.workers = workers   # None: decided by run(), from the size of the import
        self._helpers: HelperPool | None = None
        self._ahead: dict[str, tuple[Future[list[_Ahead | None]], int]] = {}
        self._ahead_pipeline = _with_parse_ahead(pipeline, self._parsed_ahead)
        self._renders = _HelperRenders(self)
        # Every raw message this run met (new or met before): their tickets are the
        # imported history ``settle_history`` files and settles at the end.
        self.raw_ids: list[int] = []

    def sources(self, paths: list[str]) -> list[Source]:
        return [open_source(self.kind, p) for p in paths]

    def run(self, sources: list[Source],
            on_item: Callable[[ImportSummary], None] | None = None) -> ImportSummary:
        workers = self.workers
        if workers is None:
            workers = default_workers(count_inputs(sources), self.pipeline)
        with ThreadPoolExecutor(BLOB_THREADS, thread_name_prefix="import-blob") as pool:
            self._pool = pool
            if workers > 0 and can_fork() and self._ahead_pipeline is not None:
                # fork: the helpers inherit what this process imported (a parser ready
                # to run); they touch no database.
                self._helpers = HelperPool(workers, _start_helper,
                                           (os.getpid(), self.services))
            try:
                for source in sources:
                    if source.error is not None:
                        self.warn(f"postdesk import: cannot read {source.path}: "
                                  f"{source.error}")
                        self._count("failed")
                        if on_item:
                            on_item(self.summary)
                        continue
                    # One batch read ahead: its first emails go to the helper while the
                    # last part of this one is recorded.
                    batches = self._batches(source.items, on_item)
                    batch = next(batches, None)
                    while batch is not None:
                        upcoming = next(batches, None)
                        self.import_batch(batch, on_item, upcoming=[
                            raw for _item, raw in upcoming or ()])
                        batch = upcoming
            finally:
                self._pool = None
                if self._helpers is not None:
                    self._helpers.shutdown()
                    self._helpers = None
                self._ahead.clear()
                self._renders.clear()
        return self.summary

    def import_item(self, item: Item) -> Outcome:
        """One message on its own (a batch of one)."""
        try:
            raw = item.read()
        except (OSError, mailbox.Error, KeyError) as exc:
            self.warn(f"postdesk import: cannot read {item.label}: {_reason(exc)}")
            return self._count("failed")
        return self.import_batch([(item, raw)])[0]

    def _batches(self, items: Sequence[Item], on_item: Callable[[ImportSummary], None] | None
                 ) -> Iterator[list[tuple[Item, bytes]]]:
        """The items read, in batches of at most BATCH_MESSAGES and about BATCH_BYTES; an
        unreadable item is counted (and named) as it is met."""
        batch: list[tuple[Item, bytes]] = []
        size = 0
        timings = self.summary.timings
        for item in items:
            started = time.perf_counter()
            try:
                raw = item.read()
            except (OSError, mailbox.Error, KeyError) as exc:
                self.warn(f"postdesk import: cannot read {item.label}: {_reason(exc)}")
                self._count("failed")
                if on_item:
                    on_item(self.summary)
                continue
            finally:
                timings["read"] += time.perf_counter() - started
            batch.append((item, raw))
            size += len(raw)
            if len(batch) >= self.batch_messages or size >= self.batch_bytes:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def import_batch(self, batch: Sequence[tuple[Item, bytes]],
                     on_item: Callable[[ImportSummary], None] | None = None, *,
                     upcoming: Sequence[bytes] = ()) -> list[Outcome]:
        """Accept the batch (one transaction), then record it ``per_transaction`` messages
        per transaction, counting each message's outcome in order as its part commits.

        ``upcoming``: the next batch's messages, whose first part the helper parses while
        this batch's last part is recorded. Each part is handed to the helper one part
        ahead, not the whole batch at once: the helper takes its work in order, and the
        drafts of the part being recorded, needed when it commits, would otherwise wait
        behind the parsing of every later part."""
        timings = self.summary.timings
        raws = [raw for _item, raw in batch]
        digests = [sha256_hex(raw) for raw in raws]
        size = self.per_transaction
        # What the helper is given to parse, part by part: this batch's parts, then the
        # next batch's first.
        after = list(upcoming[:size])
        to_parse = [(raws[i:i + size], digests[i:i + size]) for i in range(0, len(raws), size)]
        to_parse.append((after, [sha256_hex(raw) for raw in after]))
        self._submit_ahead(*to_parse[0])
        started = time.perf_counter()
        accepted = self._accept_batch(raws)
        timings["accept"] += time.perf_counter() - started
        # None: the same bytes came earlier in this batch, which processes them.
        self.raw_ids.extend(a.raw_id for a in accepted if a is not None)
        outcomes: list[Outcome] = []
        try:
            items = list(zip(batch, digests, accepted, strict=True))
            for index, part in enumerate(_chunks(items, size)):
                self._submit_ahead(*to_parse[index + 1])
                # Accepted before but never processed (an import interrupted half-way):
                # processed now, like the new ones.
                todo = [a.raw_id for _pair, _digest, a in part if a is not None
                        and (a.created or a.status == RawStatus.PENDING)]
                started = time.perf_counter()
                results = self._process_all(todo, [digest for _pair, digest, a in part
                                                   if a is not None])
                timings["process"] += time.perf_counter() - started
                for (item, _raw), _digest, result in part:
                    outcomes.append(self._outcome(item, result, results))
                    if on_item:
                        on_item(self.summary)
        finally:
            # What was parsed ahead for the next batch is kept for it.
            keep = set(to_parse[-1][1])
            self._ahead = {d: entry for d, entry in self._ahead.items() if d in keep}
            self._renders.clear()
        return outcomes

    # --- parsing ahead, in the helper processes -----------------------------------------
    def _drop_helpers(self) -> None:
        """No more helpers for this import (one died, or is stuck): parsing and rendering
        stay in this process from now on."""
        helpers, self._helpers = self._helpers, None
        if helpers is not None:
            helpers.shutdown(kill=True)

    def _submit_ahead(self, raws: Sequence[bytes], digests: Sequence[str]) -> None:
        helpers = self._helpers
        if helpers is None:
            return
        small = [(raw, digest) for raw, digest in zip(raws, digests, strict=True)
                 if len(raw) <= AHEAD_MAX_BYTES and digest not in self._ahead]
        for start in range(0, len(small), AHEAD_CHUNK):
            chunk = small[start:start + AHEAD_CHUNK]
            try:
                future = helpers.submit(_parse_ahead, [raw for raw, _digest in chunk])
            except HelperGone:   # the pipeline parses itself from now on
                self._drop_helpers()
                return
            for index, (_raw, digest) in enumerate(chunk):
                self._ahead.setdefault(digest, (future, index))

    def _foreseen(self, digests: Sequence[str]) -> Foreseen:
        """What the helper worked out of the emails with these digests, for those parsed
        ahead already: their dedupe keys and senders."""
        keys, senders = [], set()
        for digest in digests:
            ahead = self._parsed_ahead(digest)
            if ahead is not None and ahead.parsed is not None:
                keys.append(dedupe_key(ahead.parsed.message_id, digest))
                if ahead.parsed.from_addr:
                    senders.add(ahead.parsed.from_addr.lower())
        return Foreseen(keys, senders)

    def _parsed_ahead(self, digest: str) -> _Ahead | None:
        """The result parsed ahead for these bytes, when it is ready."""
        entry = self._ahead.get(digest)
        if entry is None:
            return None
        future, index = entry
        if not future.done() or future.cancelled() or future.exception() is not None:
            return None
        return future.result()[index]

    def _outcome(self, item: Item, accepted: AcceptResult | None,
                 results: dict[int, PipelineResult | None]) -> Outcome:
        if accepted is None or accepted.raw_id not in results:
            return self._count("duplicate")
        result = results[accepted.raw_id]
        if result is not None and result.status == RawStatus.PROCESSED and result.ticket_id:
            return self._count("ticket_created" if result.created_ticket else "reply_threaded")
        return self._classify(item, accepted.raw_id)

    def _process_all(self, raw_ids: Sequence[int], digests: Sequence[str] = ()
                     ) -> dict[int, PipelineResult | None]:
        """Process the batch's new messages, then hand the email they wrote (rendered
        after commit) to the sender, in order. ``digests``: of the messages' bytes (what
        the helper parsed of them is looked up together: ``_foreseen``)."""
        if self.per_transaction == 1:
            results = {raw_id: self._process(raw_id) for raw_id in raw_ids}
        else:
            results = dict(zip(raw_ids, self._process_batch(
                raw_ids, self._foreseen(digests)), strict=True))
        for result in results.values():
            if result is not None:
                self.dispatch.outbox(*result.outbox_ids)   # one send job per email
        return results

    # --- the door, for a batch --------------------------------------------------------------
    def _accept_batch(self, raws: Sequence[bytes]) -> list[AcceptResult | None]:
        """The door for a batch (``accept_many``); the blobs' fsyncs overlap in the pool."""
        services = self.services
        pool = self._pool
        return accept_many(
            services.sessions, services.blobs, raws, Envelope(mail_from=None, rcpt_tos=()),
            f"import:{self.kind}", now=services.now(), notify=self.notify,
            row_limit=services.config.desk.raw_in_database_bytes,
            publish=(lambda put, digests: list(pool.map(put, digests))) if pool else None)

    def _process(self, raw_id: int) -> PipelineResult | None:
        """One message on its own, as live mail (a batch of 1)."""
        return _retrying(lambda: process_inbound(self.services, raw_id, self._pipeline()))

    def _process_batch(self, raw_ids: Sequence[int], foreseen: Foreseen = NOTHING_FORESEEN
                       ) -> list[PipelineResult | None]:
        """The messages in one transaction (``workflow.pipeline.batch``)."""
        if not raw_ids:
            return []
        ahead = self._renders if self._helpers is not None else None
        try:
            return _retrying(lambda: process_batch(self.services, raw_ids, self._pipeline(),
                                                   ahead=ahead, foreseen=foreseen))
        finally:
            self._renders.clear()   # what a rolled-back attempt queued is never asked for

    def _pipeline(self) -> Pipeline:
        if self._helpers is not None and self._ahead_pipeline is not None:
            return self._ahead_pipeline
        return self.pipeline

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


_T = TypeVar("_T")


def _retrying(run: Callable[[], _T]) -> _T:
    """Processing re-raises only transient database errors (a busy SQLite, say, while
    `postdesk serve` writes), after rolling back all it did: wait a little and try again,
    then give up loudly."""
    for attempt in range(TRANSIENT_RETRIES):
        try:
            return run()
        except OperationalError:
            if attempt == TRANSIENT_RETRIES - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Ahead:
    """What the parse step and ``Inbound.visible_text`` compute from the bytes alone."""

    parsed: ParsedEmail | None
    visible: str | None
    unparseable: str | None = None
    classified: Classification | None = None   # classify(parsed, None): no envelope


def _parse_ahead(raws: list[bytes]) -> list[_Ahead | None]:
    """In the parsing process. None where the pipeline's own step must run (and meet the
    same error itself)."""
    out: list[_Ahead | None] = []
    for raw in raws:
        try:
            parsed = parse_email(raw)
        except UnparseableEmail as exc:
            out.append(_Ahead(None, None, str(exc)))
            continue
        except Exception:  # noqa: BLE001 - the pipeline reports it, as for live mail
            out.append(None)
            continue
        out.append(_Ahead(parsed, _or_none(visible_reply, parsed.text or ""),
                          classified=_or_none(classify, parsed, None)))
    return out


def _or_none(compute: Callable[..., _T], *args: Any) -> _T | None:
    """``compute(*args)``, or None where it fails: the pipeline computes it again, and
    reports the error, when it needs it."""
    try:
        return compute(*args)
    except Exception:  # noqa: BLE001
        return None


class _HelperRenders:
    """``RenderAhead`` over the importer's helper processes: drafts are sent to a helper
    RENDER_CHUNK at a time as they are queued, and their renderings found by Message-ID
    (new for every draft: an id could be handed out again after a rollback)."""

    def __init__(self, importer: Importer):
        self.importer = importer
        self._waiting: list[RenderJob] = []
        self._sent: dict[str, tuple[Future[list[tuple[bytes, str] | None]], int]] = {}

    def queued(self, row: DraftRow, ticket: Any) -> None:
        if self.importer._helpers is None or row.draft is None or row.draft.get("files"):
            return   # a client's files stay in this process: not copied to a helper
        self._waiting.append(RenderJob.of(row, ticket))
        if len(self._waiting) >= RENDER_CHUNK:
            self._send()

    def recorded(self) -> None:
        if self._waiting:
            self._send()

    def rendered(self, row: DraftRow) -> tuple[bytes, str] | None:
        self.recorded()
        entry = self._sent.pop(row.message_id, None)
        if entry is None:
            return None
        future, index = entry
        try:
            return future.result(timeout=RENDER_WAIT_S)[index]
        except TimeoutError:   # the helper is stuck: this process does all from now on
            self._give_up()
            return None
        except Exception:   # the helper died, or failed on it: render here
            return None

    def clear(self) -> None:
        self._waiting.clear()
        self._sent.clear()

    def _send(self) -> None:
        jobs, self._waiting = self._waiting, []
        helpers = self.importer._helpers
        if helpers is None:
            return
        try:
            future = helpers.submit(_render_ahead, jobs)
        except HelperGone:   # this process renders from now on
            self._give_up()
            return
        for index, job in enumerate(jobs):
            self._sent[job.message_id] = (future, index)

    def _give_up(self) -> None:
        self.importer._drop_helpers()
        self.clear()


# In a helper process: the importer's services (inherited by fork; only their pure parts,
# configuration, templates and blob store, are used there).
_helper_services: Services | None = None


def _start_helper(parent_pid: int, services: Services) -> None:
    global _helper_services
    _helper_services = services
    _die_with_parent(parent_pid)


def _render_ahead(jobs: list[RenderJob]) -> list[tuple[bytes, str] | None]:
    """In a helper: each draft's email and text; None where rendering failed (the import
    renders it again itself, and marks it failed with the reason)."""
    services = _helper_services
    assert services is not None
    out: list[tuple[bytes, str] | None] = []
    for job in jobs:
        try:
            out.append(render_job(services, job))
        except Exception:  # noqa: BLE001 - reported by the import's own rendering
            out.append(None)
    return out


def _with_parse_ahead(pipeline: Pipeline, lookup: Callable[[str], _Ahead | None]
                      ) -> Pipeline | None:
    """The pipeline with its ``parse`` step taking what was parsed ahead; None when it
    has no such step."""
    original = next((s for s in pipeline.checks if s.name == "parse"), None)
    if original is None:
        return None

    def parse(ctx: Inbound) -> None:
        ahead = lookup(ctx.raw.sha256)
        if ahead is None:
            original.run(ctx)
            return
        if ahead.unparseable is not None:
            raise Quarantine("unparseable", ahead.unparseable)   # as checks.parse does
        ctx.parsed = ahead.parsed
        if ahead.visible is not None:
            ctx.visible = ahead.visible   # what Inbound.visible_text would compute
        ctx.classified_without_envelope = ahead.classified

    checks = [Step(s.name, parse) if s is original else s for s in pipeline.checks]
    return dataclasses.replace(pipeline, checks=checks)


def default_workers(inputs: int, pipeline: Pipeline = BUILTIN) -> int:
    """Helpers by default: one, when there is a second CPU for it and the import is large
    enough to pay for it (AUTO_MIN_MESSAGES); none for a pipeline other than the built-in
    one (a benchmark's timed steps stay whole in one process)."""
    return int(pipeline is BUILTIN and _usable_cpus() >= 2 and inputs >= AUTO_MIN_MESSAGES)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _die_with_parent(parent_pid: int) -> None:
    """In a helper: exit once the import that started it is gone. A killed import
    (kill -9) cannot shut its pool down, and the helper would otherwise wait on its task
    queue for ever."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="import-parent-watch", daemon=True).start()


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def count_inputs(sources: list[Source]) -> int:
    """How many summary entries the sources make: one per message, one per bad file."""
    return sum(len(s.items) if s.error is None else 1 for s in sources)


def settle_history(services: Services, raw_ids: Sequence[int], as_status: str | None
                   ) -> None:
    """After an import (finished or interrupted): file its tickets as ``as_status`` and
    record, silently, every SLA crossing before now (``workflow.desk.history``)."""
    with services.sessions() as session, session.begin():
        ticket_ids: set[int] = set()
        for chunk in _chunks(raw_ids, 500):
            ticket_ids.update(session.scalars(
                select(RawMessage.ticket_id).where(RawMessage.id.in_(chunk),
                                                   RawMessage.ticket_id.is_not(None))))
        if as_status is not None:
            tickets = session.scalars(select(Ticket).where(Ticket.id.in_(ticket_ids))
                                      .order_by(Ticket.id))
            history.file_as(services.clocks(session), list(tickets), as_status)
            session.flush()
        history.settle_before(session, ticket_ids, services.now())


def import_paths(services: Services, dispatch: Dispatch, kind: str, paths: list[str], *,
                 notify: bool = False, progress: bool = True, as_status: str | None = None,
                 batch: int = PER_TRANSACTION, workers: int | None = None) -> ImportSummary:
    """Import with a rich progress bar on stderr (counts as they happen), then settle the
    history (``settle_history``). Ctrl-C settles what was done, says how far it got and
    re-raises; a re-run resumes (the messages done are duplicates, pending ones are
    processed). ``batch``: messages recorded per transaction (``--batch``); ``workers``:
    helper processes (``--workers``; None: ``default_workers``)."""
    importer = Importer(services, dispatch, kind, notify=notify, per_transaction=batch,
                        batch_messages=max(BATCH_MESSAGES, batch), workers=workers)
    sources = importer.sources(paths)
    try:
        summary = _run(importer, sources, progress)
    except KeyboardInterrupt:
        settle_history(services, importer.raw_ids, as_status)
        print(f"interrupted: {importer.summary.total} of {count_inputs(sources)} done",
              file=sys.stderr)
        raise
    settle_history(services, importer.raw_ids, as_status)
    return summary


def _run(importer: Importer, sources: list[Source], progress: bool) -> ImportSummary:
    kind = importer.kind
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
