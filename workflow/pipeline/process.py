"""Processing of one inbound email: the body of the ``process_inbound`` actor.

Three phases, as Zammad's mail filters and Mailman's runners do it:

1. **checks** run in a read-only transaction (on SQLite a deferred BEGIN, so the write
   lock is not taken; on PostgreSQL no row is locked). They annotate the context or end
   processing with an outcome.
2. **record**: one short write transaction. The raw message's row is claimed (locked,
   still ``pending``), the handlers write ticket, message, events and clocks, the notify
   steps queue drafts from what was recorded, the reaction to an outcome (a bounce, a
   notice) is written, and the raw message is marked with its outcome. A crash before
   commit leaves the raw message ``pending`` and nothing else: it is processed again.
3. after commit, holding nothing: the drafts are rendered and composed
   (``desk.outbox.render_drafts``); the caller enqueues the returned ids to be sent.

Processing the same raw message twice changes nothing: a second run finds it no longer
``pending``, and a unique-key race with another worker re-runs the whole email.

``postdesk import`` records a batch of emails in one transaction
(``workflow.pipeline.batch``); it shares this module's rules: what the record phase does
(``record_outcome``), how a failed email is marked (``mark_failed``), which errors are
transient, and how a rolled-back savepoint is undone (``undoable``)."""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, SessionTransaction, undefer
from sqlalchemy.orm.attributes import set_committed_value

from postdesk.storage.db import read_only
from postdesk.storage.models import RawMessage, RawStatus, Ticket
from postdesk.storage.raw_store import raw_bytes
from postdesk.workflow.desk.events import deferred_events, discard_deferred_events
from postdesk.workflow.desk.outbox import OutboxWriter, render_drafts
from postdesk.workflow.desk.services import Services
from postdesk.workflow.pipeline.builtin import BUILTIN, Pipeline
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import Outcome, PipelineResult, Quarantine, run_steps

log = logging.getLogger("postdesk.inbound")

RACE_RETRIES = 3
_RAW = cast(Table, RawMessage.__table__)
# Core statements, built once: the claim reads only whether the row is still pending
# (locking it); the outcome is one UPDATE with the values this run knows, written into
# the in-memory row as its committed state, so the session has nothing left to flush.
_CLAIM = (select(_RAW.c.id).where(_RAW.c.id == bindparam("raw_id"),
                                  _RAW.c.status == RawStatus.PENDING).with_for_update())
_OUTCOME = (update(_RAW).where(_RAW.c.id == bindparam("raw_id"))
            .values(attempts=_RAW.c.attempts + 1,
                    **{c: bindparam(c) for c in ("message_id", "from_addr", "subject",
                                                  "status", "reason", "detail",
                                                  "processed_at", "ticket_id")}))


# The raw message to process, with its bytes when they live in the row (one query for
# both). Built once: ``session.get`` builds its SELECT and options anew for every call,
# which cost more than running the statement (0.27 against 0.17 ms per email).
_RAW_TO_PROCESS = (select(RawMessage).where(RawMessage.id == bindparam("raw_id"))
                   .options(undefer(RawMessage.content)))


def is_transient(exc: BaseException) -> bool:
    """Database unreachable or a lock timeout: retry rather than quarantine."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def process_inbound(services: Services, raw_id: int, pipeline: Pipeline = BUILTIN
                    ) -> PipelineResult | None:
    """Process one raw message exactly once; None when there was nothing to do (already
    processed, or no such message). A unique-key conflict means another worker committed
    something this run also wanted to create (the same email by another door, a new
    contact): the whole run is retried on fresh data, where the deduplicate check or the
    now-existing row settles it. It is never taken as a verdict by itself."""
    for attempt in range(1, RACE_RETRIES + 1):
        try:
            done = _run_once(services, raw_id, pipeline)
        except IntegrityError as exc:
            log.info("raw %s: unique-key race (attempt %s): %s", raw_id, attempt, exc.orig)
            if attempt < RACE_RETRIES:
                continue
            return _mark(services, raw_id, "processing_error", race_detail(attempt, exc))
        except Exception as exc:
            if is_transient(exc):
                raise  # Dramatiq retries with backoff; the raw message stays pending
            log.exception("processing raw message %s failed", raw_id)
            return _mark(services, raw_id, "processing_error", error_detail(exc))
        if done is None:
            return None
        # Phase 3: committed; render and compose with no lock held (the drafts as this
        # run wrote them: nothing to read back).
        result, outbox = done
        return dataclasses.replace(result, outbox_ids=tuple(
            render_drafts(services, result.outbox_ids, written=outbox.written)))
    return None


def _run_once(services: Services, raw_id: int, pipeline: Pipeline
              ) -> tuple[PipelineResult, OutboxWriter] | None:
    with services.sessions() as session:
        # Phase 1: checks, reading only.
        with read_only(session):
            raw = session.scalars(_RAW_TO_PROCESS, {"raw_id": raw_id}).first()
            if raw is None:
                log.error("raw message %s does not exist", raw_id)
                return None
            if raw.status != RawStatus.PENDING:
                return None   # processed before: a redelivered job changes nothing
            now = services.now()
            ctx = Inbound(services=services, session=session, raw=raw,
                          raw_bytes=raw_bytes(session, services.blobs, raw), now=now,
                          outbox=OutboxWriter(session, services, now))
            outcome = run_steps(pipeline.checks, ctx)
        # Phase 2: record, in one short transaction. With no savepoint: a handler that
        # quarantines the email (a flood, a staff email that names no ticket; rare) rolls
        # the whole transaction back, and the quarantine is recorded alone in another.
        known = set(session.identity_map.keys())
        try:
            with session.begin():
                if not _claimed(session, raw_id):
                    return None   # another worker finished it while the checks ran
                _refresh(ctx)
                return record_outcome(ctx, pipeline, outcome, savepoint=False), ctx.outbox
        except RecordUndone as undone:
            forget_rows_since(session, known)
            outcome = undone.outcome
        with session.begin():
            if not _claimed(session, raw_id):
                return None
            return record_outcome(ctx, pipeline, outcome), ctx.outbox


def _claimed(session: Session, raw_id: int) -> bool:
    """Lock the raw message for this transaction, if it is still ``pending``."""
    return session.connection().execute(_CLAIM, {"raw_id": raw_id}).first() is not None


class RecordUndone(Exception):
    """The record phase ended in a quarantine with no savepoint to roll back to: its
    transaction is rolled back instead (``_run_once`` records the quarantine alone)."""

    def __init__(self, outcome: Quarantine):
        super().__init__(outcome.reason)
        self.outcome = outcome


def record_outcome(ctx: Inbound, pipeline: Pipeline, outcome: Outcome | None, *,
                   savepoint: bool = True) -> PipelineResult:
    """The record phase, in the caller's transaction, after the checks ended with
    ``outcome`` (None: all passed): record the email (handlers and notify steps), react to
    the outcome, and mark the raw message with it. The one body of phase 2, for an email
    on its own (``process_inbound``) and in a batch (``batch.process_batch``).

    ``savepoint``: record inside a savepoint, so that a quarantine undoes only what the
    handlers wrote (a batch); False, for a transaction of one email, raises
    ``RecordUndone`` instead (the caller rolls back: two round trips fewer per email)."""
    if outcome is None:
        outcome = _record(ctx, pipeline, savepoint)
    if outcome is not None:
        reaction = pipeline.reactions.get((outcome.status, outcome.reason))
        if reaction is not None:
            reaction(ctx, outcome)
    return _finish(ctx, outcome)


def _record(ctx: Inbound, pipeline: Pipeline, savepoint: bool) -> Outcome | None:
    """Handlers and notify steps: a handler that quarantines the email (a flood, a staff
    email that names no client) undoes what was recorded for it, so a quarantined email
    leaves nothing behind but its raw message: by rolling back the savepoint they ran in,
    or (no savepoint) by raising ``RecordUndone`` for the caller to roll back."""
    queued = len(ctx.outbox.queued_ids)
    nested, undo = undoable(ctx.session) if savepoint else (None, None)
    # The email's events (opened, prioritised, assigned...) go in one INSERT at the end.
    with deferred_events(ctx.session):
        outcome = run_steps([*pipeline.handlers, *pipeline.notify], ctx)
        if isinstance(outcome, Quarantine):
            discard_deferred_events(ctx.session)
    if isinstance(outcome, Quarantine):
        ctx.outbox.forget(queued)
        ctx.ticket, ctx.message, ctx.created_ticket = None, None, False
        ctx.new_ticket_clocks = None
        if undo is None:
            raise RecordUndone(outcome)
        undo()
    elif nested is not None:
        nested.commit()
    return outcome


def undoable(session: Session) -> tuple[SessionTransaction, Callable[[], None]]:
    """A savepoint, and the function that rolls it back and makes the session forget
    every row it came to know inside it. Rows written with ``insert_now`` (tickets,
    messages, drafts) are persistent objects the session does not count as new, so a
    rollback alone would leave them in its identity map standing for rows that no longer
    exist, and SQLite hands their ids out again to the next rows written: harmless in a
    session that ends with the email, not in one that records a whole batch."""
    known = set(session.identity_map.keys())
    savepoint = session.begin_nested()

    def undo() -> None:
        savepoint.rollback()
        forget_rows_since(session, known)

    return savepoint, undo


def forget_rows_since(session: Session, known: set[Any]) -> None:
    """After a rollback: expunge every row the session came to know since it knew
    ``known`` (its identity keys then), see ``undoable``."""
    for state in list(session.identity_map.all_states()):
        obj = state.obj()
        if state.key not in known and obj is not None:
            session.expunge(obj)


def _refresh(ctx: Inbound) -> None:
    """What the checks read may have changed since: take the ticket again, in this
    transaction, before writing on top of it. (The org is a directory row, mirrored from
    this process's config and cached: it changes only when the config is synced.)"""
    if ctx.ticket is not None:
        ctx.ticket = ctx.session.get(Ticket, ctx.ticket.id, populate_existing=True)


def _finish(ctx: Inbound, outcome: Outcome | None) -> PipelineResult:
    """Mark the raw message with its outcome: one UPDATE (Core, on the session's
    connection; inside ``deferred_outcomes``, later, with the block's others), its values
    then set on the in-memory row as committed, without history,
    so the session's flush has nothing of the row to write (a reaction's change to the
    row, e.g. ``ticket_id``, is in the UPDATE). ``attempts`` is counted by the database
    and expired in memory. Whoever rolls back a savepoint around this expires the row
    (``batch``): the rollback does not know the UPDATE changed it."""
    raw = ctx.raw
    values: dict[str, Any] = {}
    if ctx.parsed is not None:
        # Written here, with the outcome: one UPDATE of the raw message per email.
        values.update(message_id=ctx.parsed.message_id, from_addr=ctx.parsed.from_addr,
                      subject=(ctx.parsed.subject or "")[:2000])
    else:
        values.update(message_id=raw.message_id, from_addr=raw.from_addr,
                      subject=raw.subject)
    status = outcome.status if outcome else RawStatus.PROCESSED
    reason = outcome.reason if outcome else None
    detail = outcome.detail if outcome else ""
    ticket_id = None
    if ctx.ticket is not None and status == RawStatus.PROCESSED:
        ticket_id = ctx.ticket.id
    values.update(status=status, reason=reason, detail=detail[:4000], processed_at=ctx.now,
                  ticket_id=ticket_id if ticket_id is not None else raw.ticket_id)
    deferred = ctx.session.info.get(_DEFERRED_OUTCOMES)
    if deferred is not None:
        deferred.append({"raw_id": raw.id, **values})
    else:
        ctx.session.connection().execute(_OUTCOME, {"raw_id": raw.id, **values})
    for key, value in values.items():
        set_committed_value(raw, key, value)
    ctx.session.expire(raw, ["attempts"])
    return PipelineResult(str(status), reason, detail, outcome.step if outcome else None,
                          ticket_id=ticket_id, created_ticket=ctx.created_ticket,
                          outbox_ids=tuple(ctx.outbox.queued_ids), **_raw_facts(raw))


# session.info key: the raw messages' outcomes of a ``deferred_outcomes`` block, unwritten.
_DEFERRED_OUTCOMES = "postdesk_deferred_outcomes"


@contextmanager
def deferred_outcomes(session: Session) -> Iterator[None]:
    """The raw messages' outcomes marked in the block (``_finish``) are written together,
    in one executemany UPDATE, by ``write_deferred_outcomes`` or when the block ends: a
    batch recorded without savepoints, where nothing of one email is undone alone.
    Nothing in the record phase reads a raw message's outcome back from the database; a
    block that ends by an exception writes nothing (its transaction is being rolled
    back)."""
    session.info[_DEFERRED_OUTCOMES] = []
    try:
        yield
        write_deferred_outcomes(session)
    finally:
        session.info.pop(_DEFERRED_OUTCOMES, None)


def write_deferred_outcomes(session: Session) -> None:
    deferred = session.info.get(_DEFERRED_OUTCOMES)
    if deferred:
        session.connection().execute(_OUTCOME, deferred)
        deferred.clear()


def _raw_facts(raw: RawMessage) -> dict[str, Any]:
    return {"source": raw.source, "message_id": raw.message_id, "sender": raw.from_addr,
            "received_at": raw.received_at}


def race_detail(attempts: int, exc: IntegrityError) -> str:
    return f"unique-key conflict after {attempts} attempts: {exc.orig}"


def error_detail(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def mark_failed(raw: RawMessage, reason: str, detail: str, now: datetime) -> PipelineResult:
    """Quarantine a raw message that processing failed on (still ``pending``: nothing of
    its processing was kept), with the reason and the error, for an operator."""
    if raw.status == RawStatus.PENDING:
        raw.status, raw.reason = RawStatus.QUARANTINED, reason
        raw.detail = detail[:4000]
        raw.processed_at = now
        raw.attempts += 1
    return PipelineResult("quarantined", reason, detail, None, **_raw_facts(raw))


def _mark(services: Services, raw_id: int, reason: str, detail: str) -> PipelineResult:
    with services.sessions() as session, session.begin():
        raw = session.get(RawMessage, raw_id)
        if raw is None:
            return PipelineResult("quarantined", reason, detail, None)
        return mark_failed(raw, reason, detail, services.now())
