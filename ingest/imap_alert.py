"""Tell the leads when a mailbox is in trouble: its login stopped working
(``imap_auth_alert``), or mail is stored but cannot be moved out of the folder
(``imap_move_alert``).

A mailbox nobody reads, or one that fills up with mail already handled, is a silent
outage for a support desk, so this is an email, not just a log line. Episodes live in
the database (``workflow.desk.mailboxes``), shared by every process reading the mailbox
and surviving restarts; the transaction that starts an episode is the one that queues
its alert, so there is exactly one per episode. The outbox ``dedupe_key`` carries the
episode's start as a second guard."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from postdesk.ingest.imap_sync import SyncStats
from postdesk.workflow.desk import mailboxes
from postdesk.workflow.desk.outbox import OutboxWriter, release_drafts
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.rules.config import ImapConfig

log = logging.getLogger("postdesk.imap")

TEMPLATE = "imap_auth_alert"
MOVE_TEMPLATE = "imap_move_alert"


class MailboxAlerts:
    """Records one mailbox's failure episodes and sends their alerts. ``dispatch`` may be
    None (a bare ``FolderSync`` in a test): the alert then waits as a draft for the
    scheduler's sweeper."""

    def __init__(self, services: Services, dispatch: Dispatch | None, box: ImapConfig,
                 *, method: str = "password"):
        self.services, self.dispatch, self.box, self.method = services, dispatch, box, method

    def login_failed(self, error: str) -> mailboxes.Episode:
        box = self.box
        with self.services.sessions() as session, session.begin():
            episode = mailboxes.login_failed(session, box.name, self.services.now(), error)
            ids = []
            if episode.alert:
                ids = self._queue(session, TEMPLATE, "imap_auth_alert", episode.started,
                                  f"Cannot log in to mailbox {box.name}",
                                  {"method": self.method, "error": error,
                                   "oauth2": box.oauth2_token_command is not None,
                                   "password_env": box.password_env})
        self._release(ids, "the login failure")
        return episode

    def login_works(self) -> datetime | None:
        with self.services.sessions() as session, session.begin():
            return mailboxes.login_works(session, self.box.name, self.services.now())

    def pass_ended(self, stats: SyncStats) -> None:
        """Record a pass: when it last worked, what is stored but not moved, and the
        move-failure episode (started, alerted once, or ended)."""
        box, now = self.box, self.services.now()
        ids: list[int] = []
        with self.services.sessions() as session, session.begin():
            if stats.move_error is not None:
                episode = mailboxes.move_failed(session, box.name, now, stats.move_error,
                                                stats.unmoved)
                mailboxes.record_pass(session, box.name, now, unmoved=stats.unmoved,
                                      moved_all=False)
                if episode.alert:
                    ids = self._queue(session, MOVE_TEMPLATE, "imap_move_alert",
                                      episode.started,
                                      f"Mail in mailbox {box.name} cannot be moved",
                                      {"error": stats.move_error, "unmoved": stats.unmoved,
                                       "processed_folder": box.processed_folder or ""})
                ended = None
            else:
                ended = mailboxes.record_pass(session, box.name, now, unmoved=stats.unmoved,
                                              moved_all=True)
        self._release(ids, "the failing move")
        if ended is not None:
            log.warning("imap[%s]: moving stored mail works again (failing since %s)",
                        box.name, ended.isoformat(timespec="seconds"))

    # --- the alert email -----------------------------------------------------------------
    def _queue(self, session: Session, template: str, kind: str, episode_started: datetime,
               subject: str, context: dict[str, Any]) -> list[int]:
        config, box = self.services.config, self.box
        leads = [s.email for s in config.leads()]
        if not leads:
            log.warning("imap[%s]: no staff with role 'lead' to alert (%s)", box.name, template)
            return []
        stamp = episode_started.strftime("%Y%m%dT%H%M%S.%fZ")
        writer = OutboxWriter(session, self.services)
        writer.queue(
            dedupe_key=f"{kind}:{box.name}:{stamp}", template=template, to=leads,
            subject=f"[{config.desk.name}] {subject}",
            context={"mailbox": box.name, "host": box.host, "port": box.port,
                     "username": box.username, "folder": box.folder,
                     "since": episode_started.strftime("%Y-%m-%d %H:%M UTC"), **context})
        self._leads = leads
        return list(writer.queued_ids)

    def _release(self, ids: list[int], what: str) -> None:
        if not ids:
            return
        # After commit: a crash before this line leaves a draft the scheduler's sweeper
        # renders and sends.
        if self.dispatch is not None:
            release_drafts(self.services, self.dispatch, ids)
        log.info("imap[%s]: alerted %s about %s (outbox %s)", self.box.name,
                 ", ".join(self._leads), what, ids[0])
