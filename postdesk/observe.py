"""What the live path tells an operator about each email: one log line (logger
``postdesk.mail``) and the metrics, for every inbound and every outbound email. Called by
the App around the actor bodies and the ingest door; nothing below the shell knows.

``postdesk.metrics`` (and with it prometheus_client, ~0.02 s CPU) is imported at the first
email observed, not at start-up: commands that observe none (``import``, which counts in
its own summary, ``tickets list``, ``status``) do not pay it. A process that serves
``/metrics`` imports it when it starts the endpoint (``operate.started``), so its metrics
exist before the first scrape as before."""

from __future__ import annotations

import logging

from sqlalchemy import select

from postdesk.storage.models import Outbox
from postdesk.workflow.desk.services import Services
from postdesk.workflow.pipeline.runner import PipelineResult
from postdesk.workflow.rules.refs import ticket_ref

log = logging.getLogger("postdesk.mail")


def accepted(raw_id: int, created: bool, source: str, seconds: float | None) -> None:
    if created:
        from postdesk import metrics  # see the module's docstring

        metrics.email_accepted(source, seconds)
    log.debug("accepted raw=%s source=%s new=%s", raw_id, source, created,
              extra={"event": "accept", "raw_id": raw_id, "source": source, "new": created})


def inbound(services: Services, raw_id: int, result: PipelineResult, seconds: float) -> None:
    source, message_id, sender = result.source, result.message_id, result.sender
    received_at = result.received_at
    latency = (services.now() - received_at).total_seconds() if received_at else None
    from postdesk import metrics  # see the module's docstring

    metrics.email_processed(result.status, result.reason, latency)
    ticket = (ticket_ref(services.config.desk.ticket_prefix, result.ticket_id)
              if result.ticket_id else None)
    ms = round(seconds * 1000)
    log.info("inbound raw=%s source=%s message_id=%s from=%s outcome=%s reason=%s "
             "ticket=%s ms=%s", raw_id, source, message_id, sender, result.status,
             result.reason, ticket, ms,
             extra={"event": "inbound", "raw_id": raw_id, "source": source,
                    "message_id": message_id, "sender": sender, "outcome": result.status,
                    "reason": result.reason, "ticket": ticket, "ms": ms})


def outbound(services: Services, outbox_id: int, status: str, *,
             template: str | None = None, recipient: str | None = None) -> None:
    """``template`` and ``recipient`` as the send step read them; looked up only when
    the caller has not got them (a send that failed before it could say)."""
    from postdesk import metrics  # see the module's docstring

    metrics.outbound(status)
    if template is None:
        with services.sessions() as session:
            row = session.execute(select(Outbox.template, Outbox.recipient)
                                  .where(Outbox.id == outbox_id)).one_or_none()
        template, recipient = row if row else (None, None)
    log.info("outbound outbox=%s template=%s to=%s status=%s", outbox_id, template,
             recipient, status,
             extra={"event": "outbound", "outbox_id": outbox_id, "template": template,
                    "recipient": recipient, "status": status})
