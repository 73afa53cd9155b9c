"""What every desk service, pipeline step and adapter is handed: the desk's parts as one
record (``Services``), and the one way to ask for the next job (``Dispatch``).

The shell (``postdesk.app.App``) builds both; nothing below the shell knows the App. This
is Dramatiq's "dependencies as parameters" applied to the whole desk."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from postdesk.mail.authentication import DnsFunc
from postdesk.mail.render import Renderer
from postdesk.mail.tokens import make_reply_address
from postdesk.storage.blobs import BlobStore
from postdesk.workflow.desk.sla_clocks import ClockKeeper
from postdesk.workflow.rules.calendar import BusinessCalendar
from postdesk.workflow.rules.clock import Clock
from postdesk.workflow.rules.config import Config


class Dispatch(Protocol):
    """Enqueue the next actor by id. Called only after the ids' rows are committed."""

    def inbound(self, raw_id: int) -> None: ...

    def outbox(self, *outbox_ids: int) -> None:
        """Send these emails: one job for all of them, sent in the order given."""


@dataclass
class Services:
    config: Config
    clock: Clock
    sessions: sessionmaker[Session]
    blobs: BlobStore
    secret: bytes
    calendars: Mapping[str, BusinessCalendar]
    renderer: Renderer
    # DNS lookup for DKIM keys; None uses dkimpy's resolver. Tests put a test key here.
    dkim_dns: DnsFunc | None = None

    def now(self) -> datetime:
        return self.clock.now()

    def clocks(self, session: Session) -> ClockKeeper:
        return ClockKeeper(session, self.config, self.calendars)

    @property
    def from_address(self) -> str:
        out = self.config.smtp_out
        return out.from_address if out else self.config.desk.support_addresses[0]

    @property
    def envelope_sender(self) -> str:
        # Bounces of our mail must come back to a support address, where ingest
        # recognises them and marks the outbox entry.
        return self.config.desk.support_addresses[0]

    def reply_address(self, ticket_id: int) -> str:
        """The signed reply address of a staff notification about this ticket."""
        desk = self.config.desk
        return make_reply_address(self.secret, desk.support_addresses[0], desk.ticket_prefix,
                                  ticket_id)
