"""The pipeline's unit tier: the desk tier's savepoint session and ManualClock Services
(``tests/desk/conftest.py``), and an ``inbound`` builder that stores a raw message as
ingest would and returns the ``Inbound`` the steps work on, optionally already taken
through the declared steps up to a given one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from email.message import EmailMessage

import pytest
from sqlalchemy.orm import Session

from postdesk.storage.models import RawMessage, RawStatus
from postdesk.workflow.desk.outbox import OutboxWriter
from postdesk.workflow.desk.services import Services
from postdesk.workflow.pipeline.builtin import CHECKS, HANDLERS, NOTIFY
from postdesk.workflow.pipeline.context import Inbound
from postdesk.workflow.pipeline.runner import run_steps
from postdesk.workflow.rules.clock import ManualClock
from tests.desk import conftest as desk

# The desk tier's fixtures, shared (a conftest's fixtures reach only its own folder).
engine, connection, sessions, session = desk.engine, desk.connection, desk.sessions, desk.session
config_extra, config, clock, services = desk.config_extra, desk.config, desk.clock, desk.services
outbox, new_ticket, add_message = desk.outbox, desk.new_ticket, desk.add_message
statements = desk.statements

DECLARED = [*CHECKS, *HANDLERS, *NOTIFY]

InboundBuilder = Callable[..., Inbound]


@pytest.fixture
def inbound(session: Session, services: Services, clock: ManualClock) -> InboundBuilder:
    """``inbound(email_or_bytes, envelope_from=..., notify=True, authorised=False,
    release_org=None, through=None)``.

    Stores the bytes in the blob store and a ``pending`` RawMessage row (the fields
    ``ingest.accept`` writes), and returns an Inbound over the test session with an
    OutboxWriter, ``now`` from the ManualClock. ``through="identify"`` runs the declared
    steps (checks, handlers, notify, in order) up to and including that one first, and
    fails the test if one of them ends the pipeline."""

    def build(mail: EmailMessage | bytes, *, envelope_from: str | None = None,
              envelope_to: Sequence[str] = ("support@desk.example",), notify: bool = True,
              authorised: bool = False, release_org: str | None = None,
              through: str | None = None) -> Inbound:
        raw_bytes = mail if isinstance(mail, bytes) else mail.as_bytes()
        digest = services.blobs.put(raw_bytes)
        now = clock.now()
        raw = RawMessage(sha256=digest, size=len(raw_bytes), source="test",
                         envelope_from=envelope_from, envelope_to=list(envelope_to),
                         received_at=now, status=RawStatus.PENDING, notify=notify,
                         authorised=authorised, release_org=release_org)
        session.add(raw)
        session.flush()
        ctx = Inbound(services=services, session=session, raw=raw, raw_bytes=raw_bytes,
                      now=now, outbox=OutboxWriter(session, services, now))
        if through is not None:
            names = [s.name for s in DECLARED]
            assert through in names, f"no declared step {through!r}"
            outcome = run_steps(DECLARED[:names.index(through) + 1], ctx)
            assert outcome is None, (f"{outcome.step} ended the pipeline before "
                                     f"{through!r}: {outcome.status} {outcome.reason} "
                                     f"{outcome.detail}")
        return ctx

    return build

