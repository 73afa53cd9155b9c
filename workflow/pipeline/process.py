"""Processing of one inbound email: the ``process_inbound`` actor's body and its steps.

The whole pipeline runs in one transaction holding the raw message's row lock, so the
same raw message handed to two workers is processed once, and a crash half-way leaves
nothing behind but a raw message still ``pending`` (retried)."""

from __future__ import annotations

import dataclasses
import logging
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from postdesk.mail.html_safety import sanitize_html
from postdesk.mail.parse import ParsedEmail, UnparseableEmail, parse_email
from postdesk.mail.reply_text import visible_reply
from postdesk.storage.directory import contact_for, org_by_slug
from postdesk.storage.models import Attachment, Message, Org, RawMessage, Ticket
from postdesk.workflow.desk.events import add_event, clean_subject, ticket_ref
from postdesk.workflow.desk.ticket_lookup import find_ticket
from postdesk.workflow.pipeline.runner import (
    Duplicate,
    PipelineResult,
    Quarantine,
    Step,
    run_pipeline,
    step,
)
from postdesk.workflow.rules.senders import SenderIdentity, identify_sender

if TYPE_CHECKING:
    from postdesk.app import App

log = logging.getLogger("postdesk.inbound")


@dataclass
class Inbound:
    """What the steps know about the email being processed."""

    app: App
    session: Session
    raw: RawMessage
    raw_bytes: bytes
    now: datetime
    parsed: ParsedEmail | None = None
    sender: SenderIdentity | None = None
    org: Org | None = None
    ticket: Ticket | None = None
    matched_by: str | None = None
    message: Message | None = None
    created_ticket: bool = False
    sender_verified: bool = True      # False when DKIM/DMARC was required and failed
    auto_reply: bool = False          # automatic mail recorded on a ticket
    auto_reason: str = ""
    priority_reason: str = ""
    became_p1: bool = False
    outbox_ids: list[int] = field(default_factory=list)
    _visible: str | None = None

    @property
    def config(self):  # type: ignore[no-untyped-def]
        return self.app.config

    @property
    def visible_text(self) -> str:
        """The new text of this email: quoted history and signature removed."""
        if self._visible is None:
            self._visible = visible_reply(self.email.text or "")
        return self._visible

    @property
    def email(self) -> ParsedEmail:
        assert self.parsed is not None, "parse step has not run"
        return self.parsed


# --- steps --------------------------------------------------------------------------------

@step
def parse(ctx: Inbound) -> None:
    try:
        ctx.parsed = parse_email(ctx.raw_bytes)
    except UnparseableEmail as exc:
        raise Quarantine("unparseable", str(exc)) from None
    ctx.raw.message_id = ctx.parsed.message_id
    ctx.raw.from_addr = ctx.parsed.from_addr
    ctx.raw.subject = (ctx.parsed.subject or "")[:2000]


@step
def identify(ctx: Inbound) -> None:
    ctx.sender = identify_sender(ctx.email.from_addr, ctx.config)
    if ctx.sender.kind == "unknown" and ctx.raw.authorised:
        ctx.sender = released_sender(ctx)
    if ctx.sender.kind == "unknown":
        if ctx.auto_reply:
            raise Quarantine("auto_reply", f"{ctx.auto_reason} from an unknown sender")
        from postdesk.workflow.pipeline.checks import notice_unknown_sender

        notice_unknown_sender(ctx)
        raise Quarantine("unknown_sender", f"{ctx.email.from_addr or '(no From)'} is not "
                         "staff, a listed contact or in an org's domains")
    if ctx.sender.org_slug:
        ctx.org = org_by_slug(ctx.session, ctx.sender.org_slug)


@step
def deduplicate(ctx: Inbound) -> None:
    """The same email by another door (SMTP and IMAP), or re-sent with new bytes."""
    key = inbound_dedupe_key(ctx)
    existing = ctx.session.scalar(select(Message.ticket_id).where(Message.dedupe_key == key))
    if existing is not None:
        ctx.raw.ticket_id = existing
        raise Duplicate("message_id", f"already on ticket {existing} as {key}")


@step
def locate_ticket(ctx: Inbound) -> None:
    mail = ctx.email
    match = find_ticket(
        ctx.session, secret=ctx.app.secret, prefix=ctx.config.desk.ticket_prefix,
        in_reply_to=mail.in_reply_to, references=mail.references,
        recipients=[*ctx.raw.envelope_to, *mail.to, *mail.cc], subject=mail.subject,
        sender=mail.from_addr or "", sender_org_id=ctx.org.id if ctx.org else None,
        sender_is_staff=ctx.sender is not None and ctx.sender.kind == "staff")
    if match:
        ctx.ticket, ctx.matched_by = match.ticket, match.how


def open_ticket(ctx: Inbound, org: Org, requester: str) -> Ticket:
    mail = ctx.email
    contact_for(ctx.session, requester, org, mail.from_name if requester == mail.from_addr
                else "")
    # Imported history keeps its own time line.
    opened = mail.date if (not ctx.raw.notify and mail.date) else ctx.now
    ticket = Ticket(org_id=org.id, requester_email=requester,
                    subject=clean_subject(mail.subject, ctx.config.desk.ticket_prefix),
                    status="new", priority="P3", created_at=opened, updated_at=opened, cc=[])
    ctx.session.add(ticket)
    ctx.session.flush()
    ctx.ticket, ctx.created_ticket = ticket, True
    add_event(ctx.session, ticket, "ticket_created", ctx.now, mail.from_addr or requester,
              ref=ticket_ref(ctx.config.desk.ticket_prefix, ticket.id))
    return ticket


@step
def record(ctx: Inbound) -> None:
    """A client's email: open a ticket or add the email to its ticket."""
    sender = ctx.sender
    assert sender is not None
    if ctx.ticket is None:
        if ctx.auto_reply:
            raise Quarantine("auto_reply", f"{ctx.auto_reason}, not on any ticket")
        if ctx.org is None:
            raise Quarantine("unknown_sender", "no org to file this email under")
        from postdesk.workflow.pipeline.checks import check_flood

        check_flood(ctx, sender.email)
        open_ticket(ctx, ctx.org, sender.email)
    assert ctx.ticket is not None
    ctx.message = store_message(ctx, kind="system" if ctx.auto_reply else "public",
                                direction="in", text=ctx.visible_text)
    ctx.ticket.updated_at = ctx.now
    add_event(ctx.session, ctx.ticket, "message_received", ctx.now, sender.email,
              message_id=ctx.email.message_id, matched_by=ctx.matched_by,
              message_kind=ctx.message.kind)


@cache
def _steps() -> list[Step[Inbound]]:
    """The inbound pipeline, in order. Each step is a small function with one job.
    (Imported lazily, and built once: the step modules import this one.)"""
    from postdesk.workflow.desk.allowance import balance_request
    from postdesk.workflow.pipeline import checks as hygiene
    from postdesk.workflow.pipeline import client as sla
    from postdesk.workflow.pipeline import staff

    return [
        parse,                        # bytes -> ParsedEmail, or quarantine "unparseable"
        hygiene.classify_mail,        # loops, bounces (quarantined), auto-replies (flagged)
        identify,                     # staff / contact of an org / unknown sender
        hygiene.verify_sender,        # DKIM / trusted Authentication-Results where required
        deduplicate,                  # same Message-ID by another door
        balance_request,              # "balance" from a client: answered, no ticket
        locate_ticket,                # signed ids, reply address, client ids, [PD-n]
        staff.staff_mail,             # staff replies, commands, internal notes
        record,                       # open a ticket or add the email to it
        sla.prioritise,               # escalation keyword, keyword rules (raise only)
        sla.assign,                   # rota
        sla.start_or_resume_clocks,   # SLA clocks, reopen, resume from pending
        sla.sign_off,                 # approvals while awaiting sign-off
        sla.acknowledge,              # the client's acknowledgement
        sla.page_p1,                  # P1 page to rota and leads
        staff.notify_staff,           # the assignee hears about client email
    ]


# --- helpers ------------------------------------------------------------------------------

def released_sender(ctx: Inbound) -> SenderIdentity:
    """An operator released this message from quarantine: treat its sender as a contact
    of the org chosen on release, else of the catch-all org, if there is one."""
    assert ctx.sender is not None
    slug = ctx.raw.release_org or next(
        (o.slug for o in ctx.config.orgs if "*" in o.domains), None)
    if slug is None:
        return ctx.sender
    return SenderIdentity(kind="contact", email=ctx.sender.email, org_slug=slug)


def inbound_dedupe_key(ctx: Inbound) -> str:
    mid = ctx.email.message_id
    return f"in:{mid}" if mid else f"sha:{ctx.raw.sha256}"


def store_message(ctx: Inbound, *, kind: str, direction: str, text: str | None = None,
                  author_staff_id: int | None = None) -> Message:
    mail, ticket = ctx.email, ctx.ticket
    assert ticket is not None
    message = Message(
        ticket_id=ticket.id, raw_id=ctx.raw.id, direction=direction, kind=kind,
        dedupe_key=inbound_dedupe_key(ctx), message_id=mail.message_id,
        in_reply_to=mail.in_reply_to, references=list(mail.references),
        from_addr=mail.from_addr, from_name=mail.from_name or "",
        author_staff_id=author_staff_id, to=list(mail.to), cc=list(mail.cc),
        subject=mail.subject or "", text=mail.text or "",
        # Sanitised once, here, so no later template can render a client's script.
        html=sanitize_html(mail.html) if mail.html else None,
        stripped_text=text if text is not None else (mail.text or ""),
        sent_at=mail.date, created_at=ctx.now)
    ctx.session.add(message)
    ctx.session.flush()
    limit = ctx.config.desk.max_attachment_bytes
    for part in mail.attachments:
        too_big = len(part.payload) > limit
        ctx.session.add(Attachment(
            message_id=message.id, filename=part.filename, content_type=part.content_type,
            size=len(part.payload), sha256=None if too_big else ctx.app.blobs.put(part.payload),
            content_id=part.content_id, inline=part.inline,
            note="too large: not kept" if too_big else ("winmail.dat (TNEF)"
                                                         if part.is_tnef else "")))
    return message


# --- the actor body -----------------------------------------------------------------------

def _is_transient(exc: BaseException) -> bool:
    """Database unreachable or a lock timeout: retry rather than quarantine."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


RACE_RETRIES = 3


def process_inbound(app: App, raw_id: int, steps: list[Step[Inbound]] | None = None
                    ) -> PipelineResult | None:
    """Process one raw message exactly once. A unique-key conflict means another worker
    committed something this run also wanted to create (the same email by another door,
    a new contact): the whole run is retried on fresh data, where the deduplicate step
    or the now-existing row settles it. It is never taken as a verdict by itself."""
    steps = steps if steps is not None else _steps()
    for attempt in range(1, RACE_RETRIES + 1):
        try:
            result, outbox_ids = _run_once(app, raw_id, steps)
        except IntegrityError as exc:
            log.info("raw %s: unique-key race (attempt %s): %s", raw_id, attempt, exc.orig)
            if attempt < RACE_RETRIES:
                continue
            return _mark(app, raw_id, "quarantined", "processing_error",
                         f"unique-key conflict after {attempt} attempts: {exc.orig}")
        except Exception as exc:
            if _is_transient(exc):
                raise  # Dramatiq retries with backoff; the raw message stays pending
            log.exception("processing raw message %s failed", raw_id)
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return _mark(app, raw_id, "quarantined", "processing_error", detail)
        for outbox_id in outbox_ids:
            app.enqueue_outbox(outbox_id)
        return result
    return None


def _run_once(app: App, raw_id: int, steps: list[Step[Inbound]]
              ) -> tuple[PipelineResult | None, list[int]]:
    with app.sessions() as session, session.begin():
        raw = session.scalar(
            select(RawMessage).where(RawMessage.id == raw_id).with_for_update())
        if raw is None:
            log.error("raw message %s does not exist", raw_id)
            return None, []
        if raw.status != "pending":
            return None, []   # processed before: a redelivered job changes nothing
        ctx = Inbound(app=app, session=session, raw=raw,
                      raw_bytes=app.blobs.get(raw.sha256), now=app.now())
        result = run_pipeline(steps, ctx)
        raw.status, raw.reason, raw.detail = result.status, result.reason, result.detail
        raw.processed_at = ctx.now
        raw.attempts += 1
        if ctx.ticket is not None and result.status == "processed":
            raw.ticket_id = ctx.ticket.id
            # For callers that count outcomes (postdesk import) without another query.
            result = dataclasses.replace(result, ticket_id=ctx.ticket.id,
                                         created_ticket=ctx.created_ticket)
        return result, ctx.outbox_ids


def _mark(app: App, raw_id: int, status: str, reason: str, detail: str) -> PipelineResult:
    with app.sessions() as session, session.begin():
        raw = session.get(RawMessage, raw_id)
        if raw is not None and raw.status == "pending":
            raw.status, raw.reason, raw.detail = status, reason, detail[:4000]
            raw.processed_at = app.now()
            raw.attempts += 1
    return PipelineResult(status, reason, detail, None)
