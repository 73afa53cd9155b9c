"""SQLAlchemy 2.0 models. Every schema change goes through an Alembic migration in
``storage/migrations``.

Instants are stored in UTC (``UTCDateTime`` turns SQLite's naive values back into aware
ones), so rules never see a naive datetime.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC instants")
        value = value.astimezone(UTC)
        # SQLite keeps the text; store it without offset so comparisons sort correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Bounded(TypeDecorator[str]):
    """A string column that keeps what fits. Text from email (display names, filenames,
    content types, ids) can be any length; SQLite stores anything while PostgreSQL
    refuses what is too long, so without this the same email would have two outcomes.
    The whole original is always kept in the raw message."""

    impl = String
    cache_ok = True

    def __init__(self, length: int):
        super().__init__(length)
        self.length = length

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None or len(value) <= self.length:
            return value
        return value[:self.length]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


# --- people -------------------------------------------------------------------------------

class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(Bounded(200))
    plan: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"))
    email: Mapped[str] = mapped_column(Bounded(320), unique=True)
    name: Mapped[str] = mapped_column(Bounded(200), default="")
    can_approve: Mapped[bool] = mapped_column(Boolean, default=False)
    listed: Mapped[bool] = mapped_column(Boolean, default=False)  # named in the config
    hard_bounces: Mapped[int] = mapped_column(Integer, default=0)
    flagged_at: Mapped[datetime | None]
    org: Mapped[Org] = relationship()


class Staff(Base):
    __tablename__ = "staff"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(Bounded(320), unique=True)
    name: Mapped[str] = mapped_column(Bounded(200), default="")
    role: Mapped[str] = mapped_column(String(16), default="agent")
    active: Mapped[bool] = mapped_column(Boolean, default=True)


# --- tickets ------------------------------------------------------------------------------

class Ticket(Base):
    __tablename__ = "tickets"
    # AUTOINCREMENT on SQLite so a deleted ticket's number is never handed out again.
    __table_args__ = (
        Index("ix_tickets_status_org", "status", "org_id"),
        # The flood check counts a sender's tickets of the last hour.
        Index("ix_tickets_requester_created", "requester_email", "created_at"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"))
    requester_email: Mapped[str] = mapped_column(Bounded(320))
    subject: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="new")
    priority: Mapped[str] = mapped_column(String(2), default="P3")
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    first_responded_at: Mapped[datetime | None]
    last_public_update_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    paused_since: Mapped[datetime | None]
    cc: Mapped[list[Any]] = mapped_column(JSON, default=list)
    chargeable: Mapped[bool] = mapped_column(Boolean, default=False)
    org: Mapped[Org] = relationship()
    assignee: Mapped[Staff | None] = relationship()
    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", order_by="Message.id", cascade="all, delete-orphan"
    )
    # Read side only (ticket views); clocks are written by workflow.clocks.ClockKeeper.
    clocks: Mapped[list[SlaClock]] = relationship(order_by="SlaClock.cycle", viewonly=True)


class Message(Base):
    """One email on a ticket, either way. ``dedupe_key`` is globally unique: an inbound
    email's Message-ID (or the sha256 of its bytes when it has none), so the same email
    arriving twice, by two doors or two workers at once, is stored once."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("ticket_id", "message_id", name="uq_messages_ticket_mid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    # No index of its own: uq_messages_ticket_mid's index leads with ticket_id.
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    raw_id: Mapped[int | None] = mapped_column(ForeignKey("raw_messages.id"))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    direction: Mapped[str] = mapped_column(String(3))          # in | out
    kind: Mapped[str] = mapped_column(String(10))              # public | internal | system
    dedupe_key: Mapped[str] = mapped_column(Bounded(1000), unique=True)
    message_id: Mapped[str | None] = mapped_column(Bounded(998), index=True)
    in_reply_to: Mapped[str | None] = mapped_column(Bounded(998))
    references: Mapped[list[Any]] = mapped_column(JSON, default=list)
    from_addr: Mapped[str | None] = mapped_column(Bounded(320))
    from_name: Mapped[str] = mapped_column(Bounded(200), default="")
    author_staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    to: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cc: Mapped[list[Any]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text)
    stripped_text: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None]         # the Date header
    created_at: Mapped[datetime]
    # What the lenient parser repaired or could not read in this email (short sentences);
    # SQL NULL when nothing (none_as_null: never the JSON text 'null').
    parse_defects: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True))
    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", order_by="Attachment.id", cascade="all, delete-orphan"
    )


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(Bounded(255))
    content_type: Mapped[str] = mapped_column(Bounded(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))   # None: over the size limit, not kept
    content_id: Mapped[str | None] = mapped_column(Bounded(998))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str] = mapped_column(Bounded(200), default="")  # e.g. "winmail.dat", "too large"
    message: Mapped[Message] = relationship(back_populates="attachments")


class Event(Base):
    """Append-only log of what happened to a ticket (never updated, never deleted)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))   # read with ticket_id only: no index
    actor: Mapped[str] = mapped_column(Bounded(320), default="system")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SlaClock(Base):
    """One run of one SLA target on one ticket. ``next_update`` and ``followup`` clocks
    restart by adding a new cycle; a crossing is claimed with a conditional UPDATE
    (``breached_at IS NULL``) so two schedulers never alert twice."""

    __tablename__ = "sla_clocks"
    __table_args__ = (
        UniqueConstraint("ticket_id", "target", "cycle", name="uq_sla_clocks_cycle"),
        # The scheduler's two scans; partial so they only hold running clocks.
        Index("ix_sla_clocks_due_running", "due_at",
              postgresql_where=text("stopped_at IS NULL AND paused_since IS NULL "
                                    "AND breached_at IS NULL"),
              sqlite_where=text("stopped_at IS NULL AND paused_since IS NULL "
                                "AND breached_at IS NULL")),
        Index("ix_sla_clocks_risk_running", "risk_at",
              postgresql_where=text("stopped_at IS NULL AND paused_since IS NULL "
                                    "AND at_risk_at IS NULL"),
              sqlite_where=text("stopped_at IS NULL AND paused_since IS NULL "
                                "AND at_risk_at IS NULL")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    # No index of its own: uq_sla_clocks_cycle's index leads with ticket_id.
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    # first_response | next_update | resolution | followup
    target: Mapped[str] = mapped_column(String(20))
    cycle: Mapped[int] = mapped_column(Integer, default=0)
    calendar: Mapped[str] = mapped_column(String(64))
    target_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    target_days: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime]
    paused_business_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    paused_since: Mapped[datetime | None]
    due_at: Mapped[datetime]
    risk_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    at_risk_at: Mapped[datetime | None]
    breached_at: Mapped[datetime | None]


class TimeEntry(Base):
    __tablename__ = "time_entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id"), index=True)
    staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    seconds: Mapped[int] = mapped_column(Integer)
    year: Mapped[int] = mapped_column(Integer)
    month: Mapped[int] = mapped_column(Integer)
    logged_at: Mapped[datetime]
    source_message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))


# --- raw mail and outbox ------------------------------------------------------------------

class RawMessage(Base):
    """Every email that reached us, exactly as received (bytes in the blob store).

    status: pending -> processed | duplicate | quarantined | dropped. Nothing is ever
    deleted: a message that did not become ticket content keeps its reason."""

    __tablename__ = "raw_messages"
    __table_args__ = (Index("ix_raw_messages_status_received", "status", "received_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(100))
    envelope_from: Mapped[str | None] = mapped_column(Bounded(998))
    envelope_to: Mapped[list[Any]] = mapped_column(JSON, default=list)
    received_at: Mapped[datetime]
    message_id: Mapped[str | None] = mapped_column(Bounded(998), index=True)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    reason: Mapped[str | None] = mapped_column(String(40))   # grouped within a status
    detail: Mapped[str | None] = mapped_column(Text)
    notify: Mapped[bool] = mapped_column(Boolean, default=True)  # False for imports
    authorised: Mapped[bool] = mapped_column(Boolean, default=False)  # released from quarantine
    release_org: Mapped[str | None] = mapped_column(String(64))       # org chosen on release
    from_addr: Mapped[str | None] = mapped_column(Bounded(320))
    subject: Mapped[str | None] = mapped_column(Text)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    processed_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The bytes themselves when small enough to live in the row (``desk.raw_in_database_bytes``),
    # else None and the bytes are the blob named by sha256. Deferred: listings never load it.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


class RawStatus(StrEnum):
    PENDING = "pending"
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"
    DROPPED = "dropped"


class OutboxStatus(StrEnum):
    DRAFT = "draft"            # decided and committed; not yet rendered (desk.outbox)
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"
    SUPPRESSED = "suppressed"


class Outbox(Base):
    """Every email postdesk writes. Rendered in full and stored with its final
    Message-ID *before* anything is sent; ``dedupe_key`` makes creating it idempotent."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_recipient_created", "recipient", "created_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(500), unique=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    template: Mapped[str] = mapped_column(String(100))
    recipient: Mapped[str] = mapped_column(Bounded(320))      # first To, for rate limits
    to: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cc: Mapped[list[Any]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(Bounded(998), unique=True)
    in_reply_to: Mapped[str | None] = mapped_column(Bounded(998))
    automatic: Mapped[bool] = mapped_column(Boolean, default=True)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)   # None while a draft
    # What rendering a draft needs (template data, threading, reply-to); None once rendered.
    draft: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_until: Mapped[datetime | None]   # a sender holds the row until then
    last_error: Mapped[str | None] = mapped_column(Text)
    bounced_address: Mapped[str | None] = mapped_column(Bounded(320))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class ImapCursor(Base):
    """Highest UID committed per mailbox and UIDVALIDITY (RFC 3501 §2.3.1.1)."""

    __tablename__ = "imap_cursors"
    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime]


class Lease(Base):
    """A named lease so only one scheduler runs a periodic job at a time."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class DutyRun(Base):
    """The last run of each scheduler duty (``postdesk status`` shows it)."""

    __tablename__ = "duty_runs"
    duty: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))          # host:pid of the scheduler
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    error: Mapped[str | None] = mapped_column(Text)           # None: the run succeeded


class SlaPause(Base):
    """One stretch of time a ticket's clocks stood still (the ticket was ``pending``).
    Kept as a span, not as a count of paused seconds, because how much business time a
    pause is worth depends on the calendar measuring it: after a priority change onto
    another calendar the same span is measured again on the new one. ``ended_at`` is
    None while the pause lasts."""

    __tablename__ = "sla_pauses"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class ImapMailboxState(Base):
    """How one ``[[imap]]`` mailbox is doing, kept in the database so that every
    ``postdesk imap`` process (and a restarted one) sees the same failure episodes and
    sends one alert per episode, and ``postdesk status`` can show it."""

    __tablename__ = "imap_mailbox_states"
    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)   # [[imap]] name
    last_sync_at: Mapped[datetime | None]       # end of the last complete pass
    # Committed mail still in the folder (the move or \Seen flag failed).
    unmoved_count: Mapped[int] = mapped_column(Integer, default=0)
    unmoved_since: Mapped[datetime | None]
    move_failing_since: Mapped[datetime | None]
    move_error: Mapped[str | None] = mapped_column(Text)
    move_alerted_at: Mapped[datetime | None]
    login_failing_since: Mapped[datetime | None]
    login_error: Mapped[str | None] = mapped_column(Text)
    login_alerted_at: Mapped[datetime | None]
    # The FETCH under way ({"uidvalidity": v, "uids": [...]}): found still set by the next
    # connection, it is what broke the last one.
    fetch_in_flight: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class ImapMessageStrike(Base):
    """A message that failed on its own: ``suspect`` (in a FETCH that broke a connection:
    read it alone next time), ``strikes`` (failures alone), ``failed_at`` (given up,
    flagged ``$PostdeskFailed`` on the server and skipped)."""

    __tablename__ = "imap_message_strikes"
    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)   # cursor key
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    suspect: Mapped[bool] = mapped_column(Boolean, default=False)
    strikes: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    failed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
