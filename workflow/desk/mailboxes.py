"""The stored state of the IMAP mailboxes: failure episodes, mail stored but not moved,
messages given up on, and the per-message fetch strikes behind them.

It lives in the database, not in a poller's memory, because several ``postdesk imap``
processes may read one mailbox and any of them may restart in the middle of an outage:
an episode (a refused login, a refused move) starts once, is alerted once, and ends once
for all of them. Each function works on the caller's session and transaction; the one
that starts an episode answers whether the caller is the one to alert, so the alert can
be queued in the same transaction (exactly one, even across a crash).

``mailbox_health`` is the read side, for ``postdesk status``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from postdesk.storage.models import ImapCursor, ImapMailboxState, ImapMessageStrike

_STATES = cast(Table, ImapMailboxState.__table__)
_STRIKES = cast(Table, ImapMessageStrike.__table__)
_INSERTS: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}

# A message alone that broke the connection (or failed) this many times is given up on.
STRIKE_LIMIT = 2


def _insert_missing(session: Session, table: Table, values: dict[str, Any],
                    keys: Sequence[str]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: two processes may create the row at once."""
    make = _INSERTS.get(session.get_bind().dialect.name)
    if make is None:   # another database: look first (a race then fails loudly)
        where = [table.c[k] == values[k] for k in keys]
        if session.execute(select(table.c[keys[0]]).where(*where)).first() is None:
            session.execute(table.insert().values(**values))
        return
    session.execute(make(table).values(**values).on_conflict_do_nothing(index_elements=keys))


def state(session: Session, mailbox: str, now: datetime) -> ImapMailboxState:
    """The mailbox's row, created if missing and locked for this transaction."""
    _insert_missing(session, _STATES, {"mailbox": mailbox[:200], "unmoved_count": 0,
                                       "updated_at": now}, ["mailbox"])
    row = session.scalar(select(ImapMailboxState).where(
        ImapMailboxState.mailbox == mailbox[:200]).with_for_update()
        .execution_options(populate_existing=True))
    assert row is not None
    return row


# --- failure episodes ---------------------------------------------------------------------

@dataclass(frozen=True)
class Episode:
    started: datetime
    alert: bool       # the caller is the first to report it: queue the alert now
    new: bool         # this call started the episode


def login_failed(session: Session, mailbox: str, now: datetime, error: str) -> Episode:
    row = state(session, mailbox, now)
    new = row.login_failing_since is None
    if new:
        row.login_failing_since = now
    row.login_error, row.updated_at = error[:2000], now
    alert = row.login_alerted_at is None
    if alert:
        row.login_alerted_at = now
    assert row.login_failing_since is not None
    return Episode(row.login_failing_since, alert, new)


def login_works(session: Session, mailbox: str, now: datetime) -> datetime | None:
    """End the login-failure episode; returns when it had started (None: there was none)."""
    row = state(session, mailbox, now)
    started = row.login_failing_since
    if started is not None:
        row.login_failing_since = row.login_error = row.login_alerted_at = None
        row.updated_at = now
    return started


def move_failed(session: Session, mailbox: str, now: datetime, error: str,
                unmoved: int) -> Episode:
    row = state(session, mailbox, now)
    new = row.move_failing_since is None
    if new:
        row.move_failing_since = now
    row.move_error, row.updated_at = error[:2000], now
    _set_unmoved(row, unmoved, now)
    alert = row.move_alerted_at is None
    if alert:
        row.move_alerted_at = now
    assert row.move_failing_since is not None
    return Episode(row.move_failing_since, alert, new)


def record_pass(session: Session, mailbox: str, now: datetime, *, unmoved: int,
                moved_all: bool) -> datetime | None:
    """A pass over the folder ended. ``unmoved``: committed mail still in the folder.
    With everything moved, a move-failure episode ends: returns when it had started."""
    row = state(session, mailbox, now)
    row.last_sync_at = row.updated_at = now
    _set_unmoved(row, unmoved, now)
    ended = None
    if moved_all and unmoved == 0 and row.move_failing_since is not None:
        ended = row.move_failing_since
        row.move_failing_since = row.move_error = row.move_alerted_at = None
    return ended


def _set_unmoved(row: ImapMailboxState, unmoved: int, now: datetime) -> None:
    if unmoved and not row.unmoved_count:
        row.unmoved_since = now
    elif not unmoved:
        row.unmoved_since = None
    row.unmoved_count = unmoved


# --- fetch strikes ------------------------------------------------------------------------

def fetch_begins(session: Session, mailbox: str, uidvalidity: int, uids: Sequence[int],
                 now: datetime) -> None:
    row = state(session, mailbox, now)
    row.fetch_in_flight = {"uidvalidity": uidvalidity, "uids": list(uids)}


def fetch_ends(session: Session, mailbox: str, now: datetime) -> None:
    row = state(session, mailbox, now)
    row.fetch_in_flight = None


def connection_lost(session: Session, mailbox: str, cursor_key: str, now: datetime) -> int:
    """A new connection begins: a FETCH still marked in flight died with the last one.
    A batch's messages become suspects (read alone next time); a message read alone gets
    a strike. Returns how many messages were blamed."""
    row = state(session, mailbox, now)
    in_flight, row.fetch_in_flight = row.fetch_in_flight, None
    if not in_flight:
        return 0
    validity, uids = int(in_flight["uidvalidity"]), [int(u) for u in in_flight["uids"]]
    alone = len(uids) == 1
    for uid in uids:
        strike = _strike_row(session, cursor_key, validity, uid, now)
        if alone:
            strike.strikes += 1
            strike.reason = "the server closed the connection while sending this message"
        else:
            strike.suspect = True
        strike.updated_at = now
    return len(uids)


def message_failed(session: Session, cursor_key: str, uidvalidity: int, uid: int,
                   now: datetime, reason: str) -> ImapMessageStrike:
    """A strike for a message that failed alone (the caller decides when to give up)."""
    strike = _strike_row(session, cursor_key, uidvalidity, uid, now)
    strike.strikes += 1
    strike.reason, strike.updated_at = reason[:2000], now
    return strike


def give_up(session: Session, cursor_key: str, uidvalidity: int, uid: int, now: datetime,
            reason: str) -> None:
    strike = _strike_row(session, cursor_key, uidvalidity, uid, now)
    strike.failed_at, strike.reason, strike.updated_at = now, reason[:2000], now


def fetched(session: Session, cursor_key: str, uidvalidity: int, uids: Iterable[int]) -> None:
    """These messages were read fine: forget their strikes (not a failure given up on)."""
    wanted = list(uids)
    if wanted:
        session.execute(delete(ImapMessageStrike).where(
            ImapMessageStrike.mailbox == cursor_key[:200],
            ImapMessageStrike.uidvalidity == uidvalidity, ImapMessageStrike.uid.in_(wanted),
            ImapMessageStrike.failed_at.is_(None)))


def strikes_of(session: Session, cursor_key: str, uidvalidity: int
               ) -> dict[int, ImapMessageStrike]:
    return {int(s.uid): s for s in session.scalars(select(ImapMessageStrike).where(
        ImapMessageStrike.mailbox == cursor_key[:200],
        ImapMessageStrike.uidvalidity == uidvalidity))}


def _strike_row(session: Session, cursor_key: str, uidvalidity: int, uid: int,
                now: datetime) -> ImapMessageStrike:
    key = {"mailbox": cursor_key[:200], "uidvalidity": uidvalidity, "uid": uid}
    _insert_missing(session, _STRIKES, {**key, "suspect": False, "strikes": 0,
                                        "updated_at": now}, list(key))
    row = session.scalar(select(ImapMessageStrike).filter_by(**key).with_for_update()
                         .execution_options(populate_existing=True))
    assert row is not None
    return row


# --- the read side ------------------------------------------------------------------------

def mailbox_health(session: Session, names: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One dict per mailbox (those in the database, plus ``names``, e.g. the configured
    ones, which shows a mailbox never read as such), sorted by name:

    ``mailbox``, ``last_sync_at`` (ISO 8601 or None), ``unmoved`` {``count``, ``since``},
    ``failed_messages`` [{``folder``, ``uidvalidity``, ``uid``, ``reason``, ``since``}],
    ``episodes`` [{``kind``: ``login``|``move``, ``since``, ``error``, ``alerted_at``}],
    ``ok`` (no episode, nothing unmoved, synced at least once)."""
    states = {s.mailbox: s for s in session.scalars(select(ImapMailboxState))}
    failed: dict[str, list[dict[str, Any]]] = {}
    cursor_keys = set(session.scalars(select(ImapCursor.mailbox)))
    for strike in session.scalars(select(ImapMessageStrike).where(
            ImapMessageStrike.failed_at.is_not(None)).order_by(
            ImapMessageStrike.mailbox, ImapMessageStrike.uid)):
        name, _, folder = strike.mailbox.partition(":")
        failed.setdefault(name, []).append({
            "folder": folder, "uidvalidity": int(strike.uidvalidity), "uid": int(strike.uid),
            "reason": strike.reason, "since": _iso(strike.failed_at)})
    known = set(states) | set(failed) | set(names) | {k.partition(":")[0] for k in cursor_keys}
    out = []
    for name in sorted(known):
        row = states.get(name)
        episodes = []
        if row is not None and row.login_failing_since is not None:
            episodes.append({"kind": "login", "since": _iso(row.login_failing_since),
                             "error": row.login_error, "alerted_at": _iso(row.login_alerted_at)})
        if row is not None and row.move_failing_since is not None:
            episodes.append({"kind": "move", "since": _iso(row.move_failing_since),
                             "error": row.move_error, "alerted_at": _iso(row.move_alerted_at)})
        unmoved = row.unmoved_count if row is not None else 0
        last_sync = row.last_sync_at if row is not None else None
        out.append({
            "mailbox": name, "last_sync_at": _iso(last_sync),
            "unmoved": {"count": unmoved,
                        "since": _iso(row.unmoved_since) if row is not None else None},
            "failed_messages": failed.get(name, []), "episodes": episodes,
            "ok": not episodes and not unmoved and last_sync is not None})
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None
