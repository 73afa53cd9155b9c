"""Tell the leads when a mailbox cannot be read because its login stopped working.

A mailbox nobody reads is a silent outage for a support desk, so this is an email, not
just a log line. The poller sends one per failure episode; the outbox ``dedupe_key``
carries the episode's start so a retried call within one episode queues nothing new."""

from __future__ import annotations

import logging
from datetime import datetime

from postdesk.workflow.desk.outbox import OutboxWriter, release_drafts
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.rules.config import ImapConfig

log = logging.getLogger("postdesk.imap")

TEMPLATE = "imap_auth_alert"


def send_auth_alert(services: Services, dispatch: Dispatch, box: ImapConfig, *, method: str,
                    error: str, episode_started: datetime) -> int | None:
    """Queue the alert and, once committed, render it and hand it to the sender; returns
    the outbox id (None: no leads, or already queued for this episode)."""
    config = services.config
    leads = [s.email for s in config.leads()]
    if not leads:
        log.warning("imap[%s]: no staff with role 'lead' to alert about the login failure",
                    box.name)
        return None
    stamp = episode_started.strftime("%Y%m%dT%H%M%S.%fZ")
    with services.sessions() as session, session.begin():
        writer = OutboxWriter(session, services)
        writer.queue(
            dedupe_key=f"imap_auth_alert:{box.name}:{stamp}", template=TEMPLATE,
            to=leads, subject=f"[{config.desk.name}] Cannot log in to mailbox {box.name}",
            context={"mailbox": box.name, "host": box.host, "port": box.port,
                     "username": box.username, "folder": box.folder, "method": method,
                     "error": error, "since": episode_started.strftime("%Y-%m-%d %H:%M UTC"),
                     "oauth2": box.oauth2_token_command is not None,
                     "password_env": box.password_env})
    # After commit: a crash before this line leaves a draft the scheduler's sweeper renders.
    release_drafts(services, dispatch, writer.queued_ids)
    if not writer.queued_ids:
        return None
    outbox_id = writer.queued_ids[0]
    log.info("imap[%s]: alerted %s about the login failure (outbox %s)", box.name,
             ", ".join(leads), outbox_id)
    return outbox_id
