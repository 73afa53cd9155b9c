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
``pending``, and a unique-key race with another worker re-runs the whole email."""

from __future__ import annotations

import dataclasses
import logging
import traceback
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import undefer

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
_CLAIM = (select(RawMessage).where(RawMessage.id == bindparam("raw_id"),
                                   RawMessage.status == RawStatus.PENDING)
          .with_for_update().execution_options(populate_existing=True))


# The bytes come with the row when they live in it (one query for both).
_WITH_CONTENT = [undefer(RawMessage.content)]


def _is_transient(exc: BaseException) -> bool:
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
            return _mark(services, raw_id, "processing_error",
                         f"unique-key conflict after {attempt} attempts: {exc.orig}")
        except Exception as exc:
            if _is_transient(exc):
                raise  # Dramatiq retries with backoff; the raw message stays pending
            log.exception("processing raw message %s failed", raw_id)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return _mark(services, raw_id, "processing_error", detail)
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
            raw = session.get(RawMessage, raw_id, options=_WITH_CONTENT)
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
        # Phase 2: record, in one short transaction.
        with session.begin():
            claimed = session.scalar(_CLAIM, {"raw_id": raw_id})
            if claimed is None:
                return None   # another worker finished it while the checks ran
            _refresh(ctx)
            if outcome is None:
                outcome = _record(ctx, pipeline)
            if outcome is not None:
                reaction = pipeline.reactions.get((outcome.status, outcome.reason))
                if reaction is not None:
                    reaction(ctx, outcome)
            return _finish(ctx, outcome), ctx.outbox


def _record(ctx: Inbound, pipeline: Pipeline) -> Outcome | None:
    """Handlers and notify steps, in a savepoint: a handler that quarantines the email
    (a flood, a staff email that names no client) undoes what was recorded for it, so a
    quarantined email leaves nothing behind but its raw message."""
    queued = len(ctx.outbox.queued_ids)
    savepoint = ctx.session.begin_nested()
    # The email's events (opened, prioritised, assigned...) go in one INSERT at the end.
    with deferred_events(ctx.session):
        outcome = run_steps([*pipeline.handlers, *pipeline.notify], ctx)
        if isinstance(outcome, Quarantine):
            discard_deferred_events(ctx.session)
    if isinstance(outcome, Quarantine):
        savepoint.rollback()
        ctx.outbox.forget(queued)
        ctx.ticket, ctx.message, ctx.created_ticket = None, None, False
        ctx.new_ticket_clocks = None
    else:
        savepoint.commit()
    return outcome


def _refresh(ctx: Inbound) -> None:
    """What the checks read may have changed since: take the ticket again, in this
    transaction, before writing on top of it. (The org is a directory row, mirrored from
    this process's config and cached: it changes only when the config is synced.)"""
    if ctx.ticket is not None:
        ctx.ticket = ctx.session.get(Ticket, ctx.ticket.id, populate_existing=True)


def _finish(ctx: Inbound, outcome: Outcome | None) -> PipelineResult:
    raw = ctx.raw
    if ctx.parsed is not None:
        # Written here, with the outcome: one UPDATE of the raw message per email.
        raw.message_id = ctx.parsed.message_id
        raw.from_addr = ctx.parsed.from_addr
        raw.subject = (ctx.parsed.subject or "")[:2000]
    status = outcome.status if outcome else RawStatus.PROCESSED
    reason = outcome.reason if outcome else None
    detail = outcome.detail if outcome else ""
    raw.status, raw.reason, raw.detail = status, reason, detail[:4000]
    raw.processed_at = ctx.now
    raw.attempts += 1
    ticket_id = None
    if ctx.ticket is not None and status == RawStatus.PROCESSED:
        raw.ticket_id = ticket_id = ctx.ticket.id
    return PipelineResult(str(status), reason, detail, outcome.step if outcome else None,
                          ticket_id=ticket_id, created_ticket=ctx.created_ticket,
                          outbox_ids=tuple(ctx.outbox.queued_ids), **_raw_facts(raw))


def _raw_facts(raw: RawMessage) -> dict[str, Any]:
    return {"source": raw.source, "message_id": raw.message_id, "sender": raw.from_addr,
            "received_at": raw.received_at}


def _mark(services: Services, raw_id: int, reason: str, detail: str) -> PipelineResult:
    facts: dict[str, Any] = {}
    with services.sessions() as session, session.begin():
        raw = session.get(RawMessage, raw_id)
        if raw is not None and raw.status == RawStatus.PENDING:
            raw.status, raw.reason = RawStatus.QUARANTINED, reason
            raw.detail = detail[:4000]
            raw.processed_at = services.now()
            raw.attempts += 1
        if raw is not None:
            facts = _raw_facts(raw)
    return PipelineResult("quarantined", reason, detail, None, **facts)
