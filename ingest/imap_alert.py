"""Tell the leads when a mailbox cannot be read because its login stopped working.

A mailbox nobody reads is a silent outage for a support desk, so this is an email, not
just a log line. The poller sends one per failure episode; the outbox ``dedupe_key``
carries the episode's start so a retried call within one episode queues nothing new."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from postdesk.workflow.rules.config import ImapConfig

if TYPE_CHECKING:
    from postdesk.app import App

log = logging.getLogger("postdesk.imap")

TEMPLATE = "imap_auth_alert"


def send_auth_alert(app: App, box: ImapConfig, *, method: str, error: str,
                    episode_started: datetime) -> int | None:
    """Queue the alert and enqueue its sending; returns the outbox id (None: no leads, or
    already queued for this episode)."""
    from postdesk.workflow.desk.outbox import queue_email

    leads = [s.email for s in app.config.leads()]
    if not leads:
        log.warning("imap[%s]: no staff with role 'lead' to alert about the login failure",
                    box.name)
        return None
    stamp = episode_started.strftime("%Y%m%dT%H%M%S.%fZ")
    with app.sessions() as session, session.begin():
        row = queue_email(
            session, app, dedupe_key=f"imap_auth_alert:{box.name}:{stamp}", template=TEMPLATE,
            to=leads, subject=f"[{app.config.desk.name}] Cannot log in to mailbox {box.name}",
            context={"mailbox": box.name, "host": box.host, "port": box.port,
                     "username": box.username, "folder": box.folder, "method": method,
                     "error": error, "since": episode_started.strftime("%Y-%m-%d %H:%M UTC"),
                     "oauth2": box.oauth2_token_command is not None,
                     "password_env": box.password_env},
            now=app.now())
        outbox_id = row.id if row is not None else None
    if outbox_id is not None:
        app.enqueue_outbox(outbox_id)
        log.info("imap[%s]: alerted %s about the login failure (outbox %s)", box.name,
                 ", ".join(leads), outbox_id)
    return outbox_id
