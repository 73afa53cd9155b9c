"""Processing a batch of inbound emails in one database transaction (``postdesk import``).

The same three phases as one email (``process``), with the batch as the unit of commit:

1. one write transaction claims the batch's raw messages still ``pending`` (on PostgreSQL
   ``FOR UPDATE``; on SQLite the transaction's ``BEGIN IMMEDIATE`` already excludes other
   writers);
2. each email, in input order, runs its checks and its record phase
   (``process.record_outcome``), at first with no savepoint. When one email needs its
   work undone (an error, a bad row, a unique-key race, a handler's quarantine), the
   whole transaction is rolled back and the batch recorded again from the start with
   each email inside a SAVEPOINT of its own: an email whose processing fails has its
   savepoint rolled back and is quarantined as ``processing_error`` with the error,
   exactly as on its own; the others are untouched.
   The checks run inside the batch's transaction, so an email sees what the emails before
   it in the batch recorded (a reply threads onto a ticket opened three emails earlier,
   a second copy is a duplicate, the flood limit counts the batch's tickets);
3. after the batch commits, holding nothing, the drafts of the emails that were recorded
   are rendered (``desk.outbox.render_drafts``); the caller hands the returned ids to the
   sender. A draft of a rolled-back email never existed, so it is never sent.

A crash (kill -9, a lost connection) before the commit leaves every raw message of the
batch ``pending`` and nothing else: the next run processes the batch again, and since no
ticket, message, event or draft of it was committed, creates each exactly once. A crash
after the commit leaves drafts, rendered by the sweeper as after a single email.

One difference from one email per transaction, by design: the drafts of a batch are
rendered together after it commits, so an email later in the same batch does not see the
outgoing messages that rendering records on a ticket. Imported mail cannot refer to them
(their Message-IDs are made when the draft is, long after the imported email was written).

Locks last until the batch commits: on SQLite the database's write lock (a live desk on
the same database waits up to one batch to accept mail), on PostgreSQL the batch's raw
message rows and the contact rows the flood check locks for each sender that opened a
ticket (a live worker recording a new ticket from one of them waits for the batch). A
transient database error (SQLite busy, PostgreSQL down, a lock timeout or a deadlock)
rolls back the whole batch and is raised, for the caller to retry the batch."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from postdesk.storage.directory import known_contacts
from postdesk.storage.models import RawMessage, RawStatus
from postdesk.storage.raw_store import raw_bytes
from postdesk.workflow.desk.events import deferred_events, write_deferred_events
from postdesk.workflow.desk.outbox import OutboxWriter, RenderAhead, render_drafts
from postdesk.workflow.desk.recent import HOUR, remember_windows, remembered_counts
from postdesk.workflow.desk.rows import buffered_rows, write_buffered_rows
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.tickets import looked_up_together
from postdesk.workflow.pipeline.builtin import BUILTIN, Pipeline
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.process import (
    RACE_RETRIES,
    RecordUndone,
    deferred_outcomes,
    error_detail,
    is_transient,
    mark_failed,
    race_detail,
    record_outcome,
    undoable,
    write_deferred_outcomes,
)
from postdesk.workflow.pipeline.runner import PipelineResult, run_steps

log = logging.getLogger("postdesk.inbound")

# The bytes come with the rows when they live in them (``storage.raw_store``).
_CLAIM_MANY = (select(RawMessage).options(undefer(RawMessage.content))
               .where(RawMessage.id.in_(bindparam("ids", expanding=True)),
                      RawMessage.status == RawStatus.PENDING)
               .with_for_update().execution_options(populate_existing=True))


@dataclasses.dataclass(frozen=True)
class Foreseen:
    """What the caller worked out ahead about a batch's emails (an import's helper, as it
    parsed them), for the batch to look up together when it is recorded without
    savepoints: their dedupe keys (``tickets.looked_up_together``) and their senders'
    addresses, whose hour of tickets and of automatic mail is read at once
    (``recent.remember_windows``), and whose contact rows are looked up together
    (``directory.known_contacts``). Either may be partial or empty."""

    dedupe_keys: Collection[str] = ()
    senders: Collection[str] = ()


NOTHING_FORESEEN = Foreseen()


def process_batch(services: Services, raw_ids: Sequence[int], pipeline: Pipeline = BUILTIN,
                  *, ahead: RenderAhead | None = None, foreseen: Foreseen = NOTHING_FORESEEN
                  ) -> list[PipelineResult | None]:
    """Process the raw messages in one transaction, in the order given; one result per id
    (None where there was nothing to do: already processed, or no such message). The
    results' ``outbox_ids`` are the drafts rendered after commit, ready to send.

    Each draft is rendered with its ticket as it was when the draft was queued
    (``outbox.ticket_view``), as if each email had its own transaction. ``ahead``: told
    of each draft as it is queued, and asked for its rendering after commit (an import's
    helper process renders while the batch records). ``foreseen``: what the caller
    knows ahead of the emails (``Foreseen``).

    The batch is first recorded without savepoints (``_straight``): almost every email
    of an import records cleanly, and a savepoint per email (two round trips, and a copy
    of the session's identity map to undo it by, which grows through the batch) is most
    of what a batch adds per email. The first email that needs undoing (an error, a
    unique-key race, a handler's quarantine) rolls that whole transaction back, and the
    batch is recorded again from the start, each email in a savepoint of its own."""
    try:
        return _process(services, raw_ids, pipeline, ahead, straight=True,
                        foreseen=foreseen)
    except _NeedsSavepoints as needs:
        log.info("batch of %s: raw %s needs undoing (%s): recording the batch again, "
                 "each email in a savepoint", len(raw_ids), needs.raw_id, needs.why)
    return _process(services, raw_ids, pipeline, ahead, straight=False)


class _NeedsSavepoints(Exception):
    """An email of a batch recorded without savepoints needs its own work undone."""

    def __init__(self, raw_id: int | None, why: str):
        super().__init__(why)
        self.raw_id, self.why = raw_id, why


def _process(services: Services, raw_ids: Sequence[int], pipeline: Pipeline,
             ahead: RenderAhead | None, *, straight: bool, foreseen: Foreseen = NOTHING_FORESEEN
             ) -> list[PipelineResult | None]:
    results: list[PipelineResult | None] = []
    writers: list[OutboxWriter] = []
    one = _straight if straight else _one
    with services.sessions() as session:
        # Without savepoints nothing of one email is undone alone: the events of the whole
        # batch, and its raw messages' outcomes, are written in one statement each at its
        # end.
        with session.begin(), (_deferred(session, foreseen, services.now()) if straight
                               else nullcontext()):
            claimed = {raw.id: raw for raw in session.scalars(_CLAIM_MANY,
                                                              {"ids": list(raw_ids)})}
            for raw_id in raw_ids:
                raw = claimed.pop(raw_id, None)   # pop: a repeated id is done once
                if raw is None:
                    results.append(None)
                    continue
                result, writer = one(services, session, raw, pipeline, ahead)
                results.append(result)
                if writer is not None:
                    writers.append(writer)
            if ahead is not None:
                ahead.recorded()
            if straight:
                _write_deferred(session)
        # Committed: render the batch's drafts as they were written, holding nothing.
        queued = [i for r in results if r is not None for i in r.outbox_ids]
        ready = set(render_drafts(services, queued, ahead=ahead, written=[
            pair for writer in writers for pair in writer.written])) if queued else set()
    return [None if r is None else dataclasses.replace(
        r, outbox_ids=tuple(i for i in r.outbox_ids if i in ready)) for r in results]


def _straight(services: Services, session: Session, raw: RawMessage, pipeline: Pipeline,
              ahead: RenderAhead | None) -> tuple[PipelineResult, OutboxWriter | None]:
    """One email of a batch recorded without a savepoint. Whatever would need undoing
    raises ``_NeedsSavepoints`` (a transient error is raised as it is: the caller retries
    the batch); the batch's transaction is then rolled back by the caller's block."""
    raw_id = raw.id
    try:
        ctx = _context(services, session, raw, ahead)
        result = record_outcome(ctx, pipeline, run_steps(pipeline.checks, ctx),
                                savepoint=False)
        # Anything the email left pending in the session is written now, so that a row
        # that cannot be written is this email's error, not the next one's (a savepoint's
        # commit does the same).
        session.flush()
        return result, ctx.outbox
    except RecordUndone as undone:
        raise _NeedsSavepoints(raw_id, f"quarantined as {undone.outcome.reason}") from None
    except Exception as exc:
        if is_transient(exc):
            raise
        raise _NeedsSavepoints(raw_id, type(exc).__name__) from exc


@contextmanager
def _deferred(session: Session, foreseen: Foreseen, now: datetime) -> Iterator[None]:
    """What a batch recorded without savepoints does together: its rows held back and
    written one statement per table (on SQLite), its events and outcomes written at its
    end, its hourly counts remembered (its senders' hours read together), its emails'
    keys and its senders' contacts looked up."""
    with buffered_rows(session), deferred_events(session), deferred_outcomes(session), \
            remembered_counts(session), looked_up_together(session, foreseen.dedupe_keys):
        remember_windows(session, foreseen.senders, now - HOUR)
        known_contacts(session, foreseen.senders)
        yield


def _write_deferred(session: Session) -> None:
    """The batch's rows held back, events and raw messages' outcomes, before it commits.
    One that cannot be written is some email's error: recording the batch again with
    savepoints finds which."""
    for what, write in (("its rows", write_buffered_rows),
                        ("its events", write_deferred_events),
                        ("its outcomes", write_deferred_outcomes)):
        try:
            write(session)
        except Exception as exc:
            if is_transient(exc):
                raise
            raise _NeedsSavepoints(None, f"{what}: {type(exc).__name__}") from exc


def _context(services: Services, session: Session, raw: RawMessage,
             ahead: RenderAhead | None) -> Inbound:
    now = services.now()
    return Inbound(services=services, session=session, raw=raw,
                   raw_bytes=raw_bytes(session, services.blobs, raw), now=now,
                   outbox=OutboxWriter(session, services, now, frozen_tickets=True,
                                       on_queued=ahead.queued if ahead else None))


def _one(services: Services, session: Session, raw: RawMessage, pipeline: Pipeline,
         ahead: RenderAhead | None) -> tuple[PipelineResult, OutboxWriter | None]:
    """One email of the batch, in its own savepoint; its drafts' writer when recorded.
    A unique-key conflict re-runs the email on fresh data (another process committed
    what it wanted to create), as ``process_inbound`` does; any other error, or the
    conflict once more than RACE_RETRIES times, quarantines it alone."""
    raw_id = raw.id
    for attempt in range(1, RACE_RETRIES + 1):
        savepoint, undo = undoable(session)
        try:
            ctx = _context(services, session, raw, ahead)
            result = record_outcome(ctx, pipeline, run_steps(pipeline.checks, ctx))
            savepoint.commit()
            return result, ctx.outbox
        except IntegrityError as exc:
            _undo(session, raw, undo)
            log.info("raw %s: unique-key race (attempt %s): %s", raw_id, attempt, exc.orig)
            if attempt == RACE_RETRIES:
                return _failed(services, session, raw, race_detail(attempt, exc)), None
        except Exception as exc:
            if is_transient(exc):
                raise   # the whole batch is rolled back; the caller retries it
            _undo(session, raw, undo)
            log.exception("processing raw message %s failed", raw_id)
            return _failed(services, session, raw, error_detail(exc)), None
    raise AssertionError("unreachable")


def _undo(session: Session, raw: RawMessage, undo: Callable[[], None]) -> None:
    """Roll the email's savepoint back, and read its raw message again when next used:
    its outcome may have been written (``process._finish``, a Core UPDATE the rollback
    does not know of) before the savepoint failed."""
    undo()
    session.expire(raw)


def _failed(services: Services, session: Session, raw: RawMessage, detail: str
            ) -> PipelineResult:
    result = mark_failed(raw, "processing_error", detail, services.now())
    session.flush()   # now, so that a problem with it is this email's, not the next one's
    return result
