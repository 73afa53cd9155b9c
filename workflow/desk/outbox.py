"""The outbox, in two steps so that no email is rendered while a lock is held.

1. ``OutboxWriter.queue`` runs inside the caller's (short) transaction: it decides the
   email — recipients, subject, template, the data the template needs, its final
   Message-ID — and stores it as a ``draft`` row. That is cheap (no template, no MIME), and
   it commits with whatever the email is about, so a crash can never lose it.
2. ``render_drafts`` runs after commit, holding nothing: it renders and composes each draft
   and stores the exact bytes (``queued``, or ``suppressed`` when over the automatic-mail
   limit), recording client-facing mail among the ticket's messages. It is idempotent
   (a conditional UPDATE from ``draft``), so the worker and the sweeper may race.

Only ``queued`` rows are ever sent (``postdesk.outbound.sender``).

Rendering a draft is a function of the draft and the ticket alone (``RenderJob``,
``render_job``): no database. So an import may render its drafts ahead, in a helper
process, while its batch is still being recorded (``RenderAhead``); a batch's drafts see
their tickets as they were when queued (``ticket_view``), as one email per transaction
does."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from postdesk.mail.compose import OutgoingAttachment, OutgoingEmail, compose
from postdesk.mail.tokens import make_message_id
from postdesk.storage.db import plain_transaction, read_only
from postdesk.storage.directory import org_by_id
from postdesk.storage.models import Message, Outbox, OutboxStatus, Ticket
from postdesk.workflow.desk.recent import HOUR, automatic_sent_since, noted_automatic
from postdesk.workflow.desk.rows import insert_values_now
from postdesk.workflow.desk.services import Dispatch, Services

log = logging.getLogger("postdesk.outbox")


# Built once (building a statement costs more than running it on SQLite).
_DRAFTS = select(Outbox).where(Outbox.id.in_(bindparam("ids", expanding=True)))
_INSERT_MESSAGE = insert(Message)
# Rendering is stored only if the draft is still as it was read (a racing renderer, the
# worker or the sweeper, may have stored it first).
_STILL_DRAFT = (Outbox.id == bindparam("outbox_id"), Outbox.status == bindparam("was"),
                Outbox.raw.is_(None))
_STORE_RENDERED = update(Outbox).where(*_STILL_DRAFT).values(
    raw=bindparam("new_raw"), status=bindparam("new_status"), draft=None)
_STORE_FAILED = update(Outbox).where(*_STILL_DRAFT).values(
    status=bindparam("new_status"), last_error=bindparam("error"))


# The ticket's attributes a template sees in a ``ticket_view`` (with ``org``).
_VIEWED = ("id", "requester_email", "subject", "status", "priority", "created_at",
           "updated_at", "first_responded_at", "resolved_at", "closed_at", "chargeable")


def ticket_view(ticket: Ticket) -> SimpleNamespace:
    """The ticket as a template sees it, frozen now: its own values and its org's name,
    slug and plan (what the built-in templates use, and more). Plain data: it can be
    pickled to a helper process, and later changes to the ticket do not reach it."""
    org = ticket.org
    return SimpleNamespace(**{name: getattr(ticket, name) for name in _VIEWED},
                           org=SimpleNamespace(name=org.name, slug=org.slug, plan=org.plan))


@dataclasses.dataclass(slots=True)
class Draft:
    """A draft as ``OutboxWriter.queue`` wrote it: its outbox row's values, not an object
    of the session (the row is written by one INSERT; building and attaching an ORM row
    was most of what queueing cost). The renderers read it as they read a row."""

    id: int
    ticket_id: int | None
    template: str
    recipient: str
    to: list[str]
    cc: list[str]
    subject: str
    message_id: str
    in_reply_to: str | None
    automatic: bool
    status: str
    created_at: datetime
    draft: dict[str, Any]
    raw: bytes | None = None


_DRAFT_FIELDS = tuple(f.name for f in dataclasses.fields(Draft) if f.name not in ("id", "raw"))

# A draft as written, or as read back from the outbox.
DraftRow = Draft | Outbox


class RenderAhead(Protocol):
    """Renders drafts somewhere else as they are queued (an import's helper process)."""

    def queued(self, row: DraftRow, ticket: Any) -> None:
        """A draft was just written, with the ticket (view) its template will see."""

    def recorded(self) -> None:
        """The drafts queued so far are all there will be until the caller's transaction
        commits: render the last of them now, while it commits."""

    def rendered(self, row: DraftRow) -> tuple[bytes, str] | None:
        """The draft's email and text as rendered ahead, or None: render it here."""


class OutboxWriter:
    """Queues drafts in one session and remembers their ids, so whoever commits the
    session can hand them to ``render_drafts`` and then to the sender.

    ``frozen_tickets``: remember each draft with a ``ticket_view`` taken as it is queued
    (a batch, where later emails may change the ticket before the batch commits), rather
    than with the ticket itself. ``on_queued``: told of each draft as it is written, with
    that ticket (``RenderAhead.queued``)."""

    def __init__(self, session: Session, services: Services, now: datetime | None = None,
                 *, frozen_tickets: bool = False,
                 on_queued: Callable[[DraftRow, Any], None] | None = None):
        self.session, self.services = session, services
        self.now = now
        self.frozen_tickets, self.on_queued = frozen_tickets, on_queued
        self.queued_ids: list[int] = []
        # The drafts as written, with their tickets (or views): once the session has
        # committed, ``render_drafts(..., written=writer.written)`` renders them without
        # reading them back.
        self.written: list[tuple[DraftRow, Any]] = []

    def forget(self, count: int) -> None:
        """Drop the drafts queued after the first ``count`` (their savepoint was rolled
        back)."""
        del self.queued_ids[count:]
        del self.written[count:]

    def queue(self, *, dedupe_key: str, template: str, to: Sequence[str], subject: str,
              context: dict[str, Any], ticket: Ticket | None = None, cc: Sequence[str] = (),
              in_reply_to: str | None = None, references: Sequence[str] = (),
              automatic: bool = True, reply_to: str | None = None, kind: str = "system",
              extra_headers: dict[str, str] | None = None, on_ticket: bool = True,
              attachments: Sequence[tuple[str, str, str]] = (),
              files: Sequence[dict[str, Any]] = ()) -> Draft | None:
        """The new draft, or None when ``dedupe_key`` was queued before.

        ``attachments``: generated files, (filename, content type, text); ``files``:
        stored files to send with it (``desk.attachments.draft_file``).

        ``on_ticket``: record the email among the ticket's messages (client-facing mail);
        staff alerts and pages are kept in the outbox only."""
        session, services = self.session, self.services
        # Plain statements that flush nothing: they read drafts only, and every draft is
        # written (``insert_now``) as it is queued. What else is pending stays pending.
        now = self.now or services.now()
        suppress = automatic and over_automatic_limit(session, services, to[0], ticket, now)
        support = services.config.desk.support_addresses[0]
        # An email only staff receive gets a staff-purpose Message-ID: answering it is a
        # staff token. Anything a client sees gets a client one (it threads, nothing more).
        staff_only = all(services.config.staff_member(a) is not None for a in [*to, *cc])
        message_id = make_message_id(services.secret, ticket.id if ticket else None,
                                     secrets.token_hex(6), support.split("@", 1)[1],
                                     purpose="staff" if staff_only else "client")
        values: dict[str, Any] = dict(
            dedupe_key=dedupe_key, ticket_id=ticket.id if ticket else None, template=template,
            recipient=to[0].lower(), to=list(to), cc=list(cc), subject=subject,
            message_id=message_id, in_reply_to=in_reply_to, automatic=automatic, raw=None,
            # Over the limit: suppressed from the start (kept, rendered, never sent), so it
            # does not count towards the limit while it waits to be rendered.
            status=OutboxStatus.SUPPRESSED if suppress else OutboxStatus.DRAFT,
            created_at=now, attempts=0, claimed_until=None, last_error=None,
            bounced_address=None, sent_at=None,
            draft={"context": encode_context(context), "references": list(references),
                   "reply_to": reply_to or support, "kind": kind,
                   "extra_headers": extra_headers or {}, "on_ticket": on_ticket,
                   "suppress": suppress,
                   # (filename, content type, text): small generated files, e.g. a CSV
                   "attachments": [list(a) for a in attachments],
                   # stored files (blob references), e.g. a client's screenshot
                   "files": list(files),
                   "org": ticket.org.slug if ticket is not None else None})
        # Its id, now (it is handed to render_drafts); nothing when the key was queued
        # before, by this process or another.
        row_id = insert_values_now(session, Outbox, values, unless_exists="dedupe_key")
        if row_id is None:
            return None
        row = Draft(row_id, *(values[name] for name in _DRAFT_FIELDS))
        if automatic and not suppress:
            noted_automatic(session, row.recipient, row.ticket_id, now)
        self.queued_ids.append(row.id)
        shown: Any = ticket_view(ticket) if self.frozen_tickets and ticket else ticket
        self.written.append((row, shown))
        if self.on_queued is not None:
            self.on_queued(row, shown)
        return row


RENDER_BATCH = 50


def render_drafts(services: Services, outbox_ids: Sequence[int], *,
                  written: Sequence[tuple[DraftRow, Any]] = (),
                  ahead: RenderAhead | None = None) -> list[int]:
    """Render and compose each draft, outside any lock; returns the ids now ``queued``
    (to hand to the sender), in the order given. A draft that cannot be rendered is
    marked ``failed`` with the reason, never left behind silently.

    ``written``: drafts (with their tickets) exactly as the caller has just committed
    them (``OutboxWriter.written``); those are rendered as they are, not read again, or
    taken as ``ahead`` rendered them, and stored in one short write transaction (a
    conditional UPDATE per draft). Other drafts are taken RENDER_BATCH at a time: one
    read-only transaction reads and renders them, one short write transaction stores
    them."""
    known = {row.id: (row, ticket) for row, ticket in written
             if row.raw is None and row.draft is not None
             and row.status in (OutboxStatus.DRAFT, OutboxStatus.SUPPRESSED)}
    ready: set[int] = set()
    unique = list(dict.fromkeys(outbox_ids))
    # Drafts in hand are rendered and stored together, in one write transaction (an
    # import's batch has a few hundred); the others are read, rendered and stored
    # RENDER_BATCH at a time.
    in_hand = [_render_one(services, *known[i], ahead=ahead) for i in unique if i in known]
    if in_hand:
        ready.update(_store(services, in_hand))
    to_read = [i for i in unique if i not in known]
    for start in range(0, len(to_read), RENDER_BATCH):
        ready.update(_render_batch(services, to_read[start:start + RENDER_BATCH]))
    return [i for i in outbox_ids if i in ready]


@dataclasses.dataclass
class _Rendered:
    outbox_id: int
    status: str                       # the status the draft was read in
    values: dict[str, Any]            # the UPDATE, if the draft is still in that status
    message: dict[str, Any] | None    # the row recorded on the ticket, if it is


def _render_batch(services: Services, outbox_ids: Sequence[int]) -> set[int]:
    """Read the drafts ``outbox_ids``, render those still drafts and store them."""
    ready: set[int] = set()
    done: list[_Rendered] = []
    with services.sessions() as session, read_only(session):
        # Read and render in a read-only transaction: on SQLite a deferred BEGIN (no
        # write lock), on PostgreSQL no row lock. The write after it is short.
        rows = {row.id: row for row in session.scalars(_DRAFTS, {"ids": list(outbox_ids)})}
        held: list[Any] = []      # the identity map holds rows weakly: keep them
        for outbox_id in outbox_ids:
            row = rows.get(outbox_id)
            if row is None or row.raw is not None or row.draft is None or (
                    row.status not in (OutboxStatus.DRAFT, OutboxStatus.SUPPRESSED)):
                if row is not None and row.status == OutboxStatus.QUEUED:
                    ready.add(outbox_id)   # finished by a racing renderer: send it
                continue
            ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
            if ticket is not None:
                # The org (templates name it) from the directory cache, so that
                # ``ticket.org`` needs no query.
                held += [ticket, org_by_id(session, ticket.org_id)]
            done.append(_render_one(services, row, ticket))
    if not done:
        return ready
    return ready | _store(services, done)


class _Raced(Exception):
    """Another renderer stored some of these drafts first (``_store_together``)."""


def _store(services: Services, done: Sequence[_Rendered]) -> set[int]:
    """Store the renderings (or failures) of drafts still as they were read, recording
    client-facing mail on its ticket; the ids now ``queued``. Core statements only: a
    bare connection's transaction, no Session.

    Several drafts are stored with one statement per kind (``executemany``): every one of
    them is normally still a draft. When the rows changed fall short (a racing renderer,
    the worker or the sweeper, stored some first), that transaction is rolled back and
    the drafts are stored one by one, which tells which were ours."""
    if len(done) > 1:
        try:
            with plain_transaction(services.sessions) as connection:
                if _update_together(connection, done):
                    return _record_stored(connection, done)
        except _Raced:
            pass
    with plain_transaction(services.sessions) as connection:
        return _record_stored(connection, _update_each(connection, done))


def _update_together(connection: Connection, done: Sequence[_Rendered]) -> bool:
    """One UPDATE per kind for all of ``done``; False where the driver cannot count the
    rows an ``executemany`` changed. ``_Raced`` when fewer changed than were given."""
    if not connection.dialect.supports_sane_multi_rowcount:
        return False
    for statement in (_STORE_RENDERED, _STORE_FAILED):
        params = [_stored(item) for item in done if _update_for(item) is statement]
        if params and connection.execute(statement, params).rowcount != len(params):
            raise _Raced
    return True


def _update_each(connection: Connection, done: Sequence[_Rendered]) -> list[_Rendered]:
    """The drafts of ``done`` this renderer stored, one UPDATE each."""
    return [item for item in done
            if connection.execute(_update_for(item), _stored(item)).rowcount]


def _record_stored(connection: Connection, stored: Sequence[_Rendered]) -> set[int]:
    """Record the client-facing mail of the drafts just stored among its ticket's
    messages; the ids now ``queued``."""
    messages = [item.message for item in stored if item.message is not None]
    if messages:
        connection.execute(_INSERT_MESSAGE, messages)
    return {item.outbox_id for item in stored
            if item.values["new_status"] == OutboxStatus.QUEUED}


def _update_for(item: _Rendered) -> Any:
    return _STORE_RENDERED if "new_raw" in item.values else _STORE_FAILED


def _stored(item: _Rendered) -> dict[str, Any]:
    """The parameters of the conditional UPDATE that stores ``item``."""
    return {"outbox_id": item.outbox_id, "was": item.status, **item.values}


def _render_one(services: Services, row: DraftRow, ticket: Any, *,
                ahead: RenderAhead | None = None) -> _Rendered:
    assert row.draft is not None
    draft = row.draft
    try:
        done = ahead.rendered(row) if ahead is not None else None
        raw, text = done if done is not None else render_job(services,
                                                             RenderJob.of(row, ticket))
    except Exception as exc:
        log.exception("outbox %s (%s) could not be rendered", row.id, row.template)
        return _Rendered(row.id, row.status, {"new_status": OutboxStatus.FAILED,
                                              "error": f"render: {exc}"[:2000]}, None)
    message = None
    if ticket is not None and draft.get("on_ticket"):
        message = {
            "ticket_id": ticket.id, "outbox_id": row.id, "direction": "out",
            "kind": draft.get("kind", "system"),
            "dedupe_key": f"out:{row.message_id}", "message_id": row.message_id,
            "in_reply_to": row.in_reply_to, "references": list(draft["references"]),
            "from_addr": services.from_address, "from_name": services.config.desk.name,
            "author_staff_id": None, "to": list(row.to), "cc": list(row.cc),
            "subject": row.subject, "text": text, "html": None, "stripped_text": text,
            "sent_at": row.created_at, "created_at": row.created_at}
    status = (OutboxStatus.QUEUED if row.status == OutboxStatus.DRAFT
              else OutboxStatus.SUPPRESSED)
    return _Rendered(row.id, row.status, {"new_raw": raw, "new_status": status}, message)


def release_drafts(services: Services, dispatch: Dispatch, outbox_ids: Sequence[int]
                   ) -> list[int]:
    """After commit: render the drafts, then hand each one ready to the sender. The one
    place where queued email is enqueued; returns the ids handed on."""
    ready = render_drafts(services, outbox_ids)
    for outbox_id in ready:
        dispatch.outbox(outbox_id)
    return ready


@dataclasses.dataclass(frozen=True)
class RenderJob:
    """What rendering one draft needs, as plain data: the draft row's fields and the
    ticket (or its view) its template sees."""

    template: str
    to: list[str]
    cc: list[str]
    subject: str
    message_id: str
    created_at: datetime
    in_reply_to: str | None
    automatic: bool
    draft: dict[str, Any]
    ticket: Any

    @classmethod
    def of(cls, row: DraftRow, ticket: Any) -> RenderJob:
        assert row.draft is not None
        return cls(row.template, list(row.to), list(row.cc), row.subject, row.message_id,
                   row.created_at, row.in_reply_to, row.automatic, row.draft, ticket)


def render_job(services: Services, job: RenderJob) -> tuple[bytes, str]:
    """Render and compose one draft: the email's bytes and its text. Reads no database
    (a stored file the draft sends comes from the blob store)."""
    desk, draft = services.config.desk, job.draft
    context = decode_context(draft["context"])
    body = services.renderer.render(job.template,
                                    {"desk": desk, "ticket": job.ticket, **context},
                                    draft.get("org"))
    raw = compose(OutgoingEmail(
        from_addr=services.from_address, from_name=desk.name, to=job.to, cc=job.cc,
        subject=job.subject, body=body, message_id=job.message_id, date=job.created_at,
        reply_to=draft["reply_to"], in_reply_to=job.in_reply_to,
        references=list(draft["references"]), automatic=job.automatic,
        extra_headers=dict(draft["extra_headers"]),
        attachments=[
            *(OutgoingAttachment(name, kind, text.encode("utf-8"))
              for name, kind, text in draft.get("attachments", [])),
            *(OutgoingAttachment(filename=f["filename"], content_type=f["content_type"],
                                 data=services.blobs.get(f["sha256"]),
                                 content_id=f["content_id"], inline=f["inline"])
              for f in draft.get("files", []))]))
    return raw, body.text


def stale_draft_ids(session: Session, before: datetime, limit: int = 500) -> list[int]:
    """Drafts left by a process that died between commit and rendering."""
    return list(session.scalars(select(Outbox.id).where(
        Outbox.status.in_((OutboxStatus.DRAFT, OutboxStatus.SUPPRESSED)),
        Outbox.raw.is_(None), Outbox.created_at < before)
        .order_by(Outbox.id).limit(limit)))


def over_automatic_limit(session: Session, services: Services, recipient: str,
                         ticket: Ticket | None, now: datetime) -> bool:
    """At most ``auto_reply_limit_per_hour`` automatic emails per outside recipient and per
    ticket in any hour (staff alerts are not limited: staff must hear about breaches)."""
    recipient = recipient.lower()
    if services.config.staff_member(recipient) is not None:
        return False
    limit = services.config.desk.auto_reply_limit_per_hour
    to_recipient, on_ticket = automatic_sent_since(
        session, recipient, ticket.id if ticket is not None else None, now - HOUR)
    return to_recipient >= limit or on_ticket >= limit


# --- template data, kept as JSON in the draft -------------------------------------------
# A draft must survive a restart, so the data a template needs is stored, not held in
# memory. These few types are all the templates use; anything else is a programming
# error and fails loudly at queue time, inside the transaction that wanted the email.

def encode_context(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): encode_context(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_context(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, timedelta):
        return {"__timedelta__": value.total_seconds()}
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, date):
        return {"__date__": value.isoformat()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__object__": {f.name: encode_context(getattr(value, f.name))
                               for f in dataclasses.fields(value)}}
    if isinstance(value, SimpleNamespace):
        return {"__object__": encode_context(vars(value))}
    raise TypeError(f"template data of type {type(value).__name__} cannot be stored in a "
                    "draft; pass plain values")


def decode_context(value: Any) -> Any:
    if isinstance(value, list):
        return [decode_context(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__timedelta__" in value:
        return timedelta(seconds=value["__timedelta__"])
    if "__datetime__" in value:
        return datetime.fromisoformat(value["__datetime__"])
    if "__date__" in value:
        return date.fromisoformat(value["__date__"])
    if "__object__" in value:
        return SimpleNamespace(**{k: decode_context(v) for k, v in value["__object__"].items()})
    return {k: decode_context(v) for k, v in value.items()}
