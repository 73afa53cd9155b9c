"""``Inbound``: what the steps know about the email being processed, and the parts of the
desk they may use. Checks annotate it; handlers record from it; notify steps queue mail
from what was recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from postdesk.mail.classify import Classification
from postdesk.mail.parse import ParsedEmail
from postdesk.mail.reply_text import visible_reply
from postdesk.storage.models import Message, Org, RawMessage, SlaClock, Ticket
from postdesk.workflow.desk.outbox import OutboxWriter
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.ticket_lookup import References
from postdesk.workflow.rules.commands import CommandParse
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.refs import ticket_ref
from postdesk.workflow.rules.senders import SenderIdentity
from postdesk.workflow.rules.trust import Verdict


@dataclass
class Inbound:
    services: Services
    session: Session
    raw: RawMessage
    raw_bytes: bytes
    now: datetime
    outbox: OutboxWriter
    parsed: ParsedEmail | None = None
    sender: SenderIdentity | None = None
    org: Org | None = None
    ticket: Ticket | None = None
    matched_by: str | None = None
    message: Message | None = None
    created_ticket: bool = False
    sender_verified: bool = True      # False when DKIM/DMARC was checked and failed
    dkim: bool | None = None          # aligned DKIM pass; None: not checked / nothing to check
    dkim_how: str = ""
    references: References | None = None   # what the email's references point at
    verdict: Verdict | None = None    # the trust decision: what this email may do
    auto_reply: bool = False          # automatic mail recorded on a ticket
    auto_reason: str = ""
    priority_reason: str = ""
    became_p1: bool = False
    staff_commands: CommandParse | None = None   # a trusted staff email's commands
    signoff_refused: bool = False
    # The clocks this email started on the ticket it opened: until the transaction ends
    # nothing else can have started or stored any for that ticket, so the notify steps
    # read them here instead of querying (``running_clocks``).
    new_ticket_clocks: list[SlaClock] | None = None
    # The new text, once known: computed on first use, or handed in by a caller that
    # worked it out ahead (the importer's parse-ahead process).
    visible: str | None = field(default=None, repr=False)
    # What ``classify`` says of the email with no envelope sender (mail read from a file),
    # when a caller worked it out ahead (the importer's parse-ahead process).
    classified_without_envelope: Classification | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        return self.services.config

    @property
    def email(self) -> ParsedEmail:
        assert self.parsed is not None, "parse step has not run"
        return self.parsed

    @property
    def visible_text(self) -> str:
        """The new text of this email: quoted history and signature removed."""
        if self.visible is None:
            self.visible = visible_reply(self.email.text or "")
        return self.visible

    @property
    def new_text(self) -> str:
        """What this email added to the ticket (the stored stripped text once recorded)."""
        return self.message.stripped_text if self.message is not None else (
            self.email.text or "")

    @property
    def from_client(self) -> bool:
        return self.sender is not None and self.sender.kind == "contact"

    @property
    def from_staff(self) -> bool:
        return self.sender is not None and self.sender.kind == "staff"

    def running_clocks(self, target: str | None = None) -> list[SlaClock]:
        """The ticket's running clocks (of ``target``), oldest first: those this email
        started when it opened the ticket, else as the clock keeper reads them."""
        assert self.ticket is not None
        if self.created_ticket and self.new_ticket_clocks is not None:
            return [c for c in self.new_ticket_clocks
                    if c.stopped_at is None and target in (None, c.target)]
        return self.services.clocks(self.session).running(self.ticket, target)

    @property
    def ticket_ref(self) -> str:
        assert self.ticket is not None
        return ticket_ref(self.config.desk.ticket_prefix, self.ticket.id)
