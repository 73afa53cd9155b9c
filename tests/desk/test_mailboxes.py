"""The stored IMAP mailbox state (workflow/desk/mailboxes.py) and the alerts queued from it
(ingest/imap_alert.py): episodes start once, alert once, survive a "restart" (a new
MailboxAlerts, as a new process makes) and end once; strikes, given-up messages and
``mailbox_health``."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from postdesk.ingest.imap_alert import MailboxAlerts
from postdesk.ingest.imap_sync import SyncStats
from postdesk.storage.models import Outbox
from postdesk.workflow.desk import mailboxes
from postdesk.workflow.desk.mailboxes import mailbox_health
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.clock import ManualClock
from postdesk.workflow.rules.config import ImapConfig


def box_of(services: Services) -> ImapConfig:
    return ImapConfig(name="inbox", host="imap.example", username="support@desk.example",
                      password_env="PW")


def alerts_sent(sessions: sessionmaker[Session], template: str) -> list[Outbox]:
    with sessions() as s:
        return list(s.scalars(select(Outbox).where(Outbox.template == template)))


def test_a_login_outage_alerts_the_leads_once_even_across_a_restart(
        services: Services, sessions: sessionmaker[Session], clock: ManualClock) -> None:
    box = box_of(services)
    first = MailboxAlerts(services, None, box).login_failed("AUTHENTICATIONFAILED")
    clock.advance(timedelta(minutes=5))
    restarted = MailboxAlerts(services, None, box)       # a new process, same database
    again = restarted.login_failed("AUTHENTICATIONFAILED")
    assert (first.new, first.alert) == (True, True)
    assert (again.new, again.alert, again.started) == (False, False, first.started)
    [alert] = alerts_sent(sessions, "imap_auth_alert")
    assert alert.to == ["dev2@agency.example"]
    assert "inbox" in alert.subject

    assert restarted.login_works() == first.started
    assert restarted.login_works() is None                 # ended once
    clock.advance(timedelta(hours=1))
    assert restarted.login_failed("AUTHENTICATIONFAILED").alert   # a new episode
    assert len(alerts_sent(sessions, "imap_auth_alert")) == 2


def test_a_refused_move_alerts_once_and_ends_when_everything_is_moved(
        services: Services, sessions: sessionmaker[Session], clock: ManualClock) -> None:
    alerts = MailboxAlerts(services, None, box_of(services))
    alerts.pass_ended(SyncStats(unmoved=3, move_error="NO [NOPERM] Permission denied"))
    clock.advance(timedelta(minutes=1))
    alerts.pass_ended(SyncStats(unmoved=5, move_error="NO [NOPERM] Permission denied"))
    [alert] = alerts_sent(sessions, "imap_move_alert")
    assert alert.to == ["dev2@agency.example"] and "cannot be moved" in alert.subject

    with sessions() as s:
        [health] = mailbox_health(s)
    assert health["unmoved"] == {"count": 5, "since": "2026-11-24T10:00:00+00:00"}
    assert [e["kind"] for e in health["episodes"]] == ["move"]
    assert "NOPERM" in health["episodes"][0]["error"]
    assert health["ok"] is False

    alerts.pass_ended(SyncStats(unmoved=0, acknowledged=5))
    with sessions() as s:
        [health] = mailbox_health(s)
    assert health["episodes"] == [] and health["unmoved"] == {"count": 0, "since": None}
    assert health["ok"] is True and health["last_sync_at"] == "2026-11-24T10:01:00+00:00"
    assert len(alerts_sent(sessions, "imap_move_alert")) == 1


def test_moves_skipped_for_backoff_keep_the_episode_open(
        services: Services, sessions: sessionmaker[Session]) -> None:
    alerts = MailboxAlerts(services, None, box_of(services))
    alerts.pass_ended(SyncStats(unmoved=2, move_error="NO refused"))
    alerts.pass_ended(SyncStats(unmoved=2))     # the move was not due: still unmoved
    with sessions() as s:
        [health] = mailbox_health(s)
    assert [e["kind"] for e in health["episodes"]] == ["move"]


def test_a_fetch_that_broke_the_connection_makes_suspects_or_a_strike(
        sessions: sessionmaker[Session], clock: ManualClock) -> None:
    now = clock.now()
    with sessions() as s, s.begin():
        mailboxes.fetch_begins(s, "inbox", 7, [1, 2, 3], now)
    with sessions() as s, s.begin():
        assert mailboxes.connection_lost(s, "inbox", "inbox:INBOX", now) == 3
        assert mailboxes.connection_lost(s, "inbox", "inbox:INBOX", now) == 0   # once
    with sessions() as s:
        found = mailboxes.strikes_of(s, "inbox:INBOX", 7)
    assert sorted(found) == [1, 2, 3]
    assert all(r.suspect and r.strikes == 0 for r in found.values())

    with sessions() as s, s.begin():
        mailboxes.fetch_begins(s, "inbox", 7, [2], now)
        mailboxes.connection_lost(s, "inbox", "inbox:INBOX", now)
        mailboxes.fetched(s, "inbox:INBOX", 7, [1, 3])       # read fine alone
    with sessions() as s:
        found = mailboxes.strikes_of(s, "inbox:INBOX", 7)
    assert list(found) == [2] and found[2].strikes == 1
    assert "closed the connection" in (found[2].reason or "")


def test_mailbox_health_lists_given_up_messages_and_never_read_mailboxes(
        sessions: sessionmaker[Session], clock: ManualClock) -> None:
    with sessions() as s, s.begin():
        mailboxes.message_failed(s, "inbox:INBOX", 7, 4, clock.now(), "FETCH refused")
        mailboxes.give_up(s, "inbox:INBOX", 7, 4, clock.now(), "FETCH refused")
        mailboxes.fetched(s, "inbox:INBOX", 7, [4])     # a given-up record stays
    with sessions() as s:
        health = {h["mailbox"]: h for h in mailbox_health(s, ["inbox", "sales"])}
    assert health["inbox"]["failed_messages"] == [
        {"folder": "INBOX", "uidvalidity": 7, "uid": 4, "reason": "FETCH refused",
         "since": "2026-11-24T10:00:00+00:00"}]
    assert health["sales"] == {"mailbox": "sales", "last_sync_at": None,
                               "unmoved": {"count": 0, "since": None},
                               "failed_messages": [], "episodes": [], "ok": False}
