"""One pass over one IMAP folder: fetch what is new, commit it, then acknowledge it.

The order is what makes it exactly-once across crashes:

1. fetch ``BODY.PEEK[]`` (flags untouched) by UID above the committed cursor of
   (mailbox name and folder, UIDVALIDITY);
2. ``accept`` each message — the raw bytes are committed, idempotently by sha256;
3. advance the cursor past the batch;
4. only then move the batch to ``processed_folder`` (or flag it ``\\Seen``).

A crash before 3 re-fetches the batch and ``accept`` returns the rows it already has. A
crash between 3 and 4 leaves committed mail in the folder at or below the cursor: with a
``processed_folder`` every pass moves such leftovers. A new UIDVALIDITY has no cursor
yet, so the whole folder is read again; sha256 (``accept``) and Message-ID (the pipeline)
de-duplication make that harmless.

**One message never stops the others.** Mail over ``smtp_in.max_message_bytes`` is never
downloaded: it is logged, flagged ``\\Flagged`` + ``$PostdeskTooLarge`` and left for a
person, the same limit SMTP enforces with ``552``. Any other failure of one message — its
size, its body, storing it — is retried with the message alone; after ``STRIKE_LIMIT``
failures alone it is skipped, flagged ``\\Flagged`` + ``$PostdeskFailed`` and recorded
with the reason (``postdesk status`` lists it). A batch FETCH that the server refuses
(``NO``/``BAD``) is retried message by message at once. Some servers (Dovecot) answer a
FETCH of a message they cannot read with ``BYE`` and hang up, whether it asked for the
body or only the size: the FETCH under way is recorded in the database before it is
sent, so the next connection — of this process, a restarted one or another — knows what
broke the last one (``FetchStrikes``). A batch's messages are then read one at a time,
the cursor committed after each, and the message that breaks the connection alone is
given up after ``STRIKE_LIMIT`` strikes.

**Moving never holds up fetching.** A refused MOVE (or COPY/STORE) leaves the committed
mail in the folder and is retried with backoff (``MoveRetry``), while new mail is still
fetched and committed; how much is stored but not moved, and since when, is recorded per
pass and ends a move-failure episode when everything is moved (``ingest.imap_alert``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from imapclient import DELETED, FLAGGED, SEEN, IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from postdesk.ingest.accept import AcceptFn, Envelope
from postdesk.storage.models import ImapCursor
from postdesk.workflow.desk import mailboxes
from postdesk.workflow.desk.mailboxes import STRIKE_LIMIT
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.config import ImapConfig

log = logging.getLogger("postdesk.imap")

TOO_LARGE = b"$PostdeskTooLarge"
FAILED = b"$PostdeskFailed"
SKIPPED_KEYWORDS = (TOO_LARGE, FAILED)
SIZE = b"RFC822.SIZE"
BODY = b"BODY[]"
# A backlog logs its progress this often (whichever comes first).
PROGRESS_EVERY_MESSAGES = 1000
PROGRESS_EVERY_S = 15.0


class FolderProblem(Exception):
    """The configured folders cannot be used: a configuration problem, retried slowly."""


class MessageProblem(Exception):
    """One message could not be read or stored; the text is the reason kept for it."""


@dataclass
class SyncStats:
    """What one pass did; the timings feed the benchmark."""

    uidvalidity: int = 0
    fetched: int = 0
    accepted: int = 0          # new raw messages
    duplicates: int = 0        # bytes already accepted (re-scan, crash before the cursor)
    skipped: int = 0           # too large or unreadable, left flagged on the server
    acknowledged: int = 0      # moved or flagged \Seen, leftovers included
    unmoved: int = 0           # committed but still in the folder after this pass
    move_error: str | None = None   # why a move failed in this pass
    new_mail_announced: bool = False   # EXISTS arrived during the pass: look again
    fetch_s: float = 0.0
    accept_s: float = 0.0
    acknowledge_s: float = 0.0

    def add(self, other: SyncStats) -> None:
        for name in ("fetched", "accepted", "duplicates", "skipped", "acknowledged",
                     "fetch_s", "accept_s", "acknowledge_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.uidvalidity = other.uidvalidity or self.uidvalidity


class Record(NamedTuple):
    """What the database remembers of one message."""

    suspect: bool = False      # in a FETCH that broke a connection: read it alone
    strikes: int = 0           # failures alone
    given_up: bool = False     # skipped and flagged $PostdeskFailed
    reason: str = ""


NO_RECORD = Record()


class FetchStrikes:
    """The database record of which FETCH is under way (``workflow.desk.mailboxes``), so
    that a FETCH which broke the connection is known to the next one, after a restart too.
    ``in_flight`` is this process's own view: a connection lost while it is set was most
    likely lost to a message, not to the server, and is re-opened at once."""

    def __init__(self, services: Services, mailbox: str, cursor_key: str):
        self.services, self.mailbox, self.cursor_key = services, mailbox, cursor_key
        self.in_flight = False

    def connection_lost(self) -> int:
        """Called when a new connection starts; returns how many messages were blamed."""
        with self.services.sessions() as session, session.begin():
            blamed = mailboxes.connection_lost(session, self.mailbox, self.cursor_key,
                                               self.services.now())
        self.in_flight = False
        return blamed

    def begin(self, uidvalidity: int, uids: Sequence[int]) -> None:
        with self.services.sessions() as session, session.begin():
            mailboxes.fetch_begins(session, self.mailbox, uidvalidity, uids, self.services.now())
        self.in_flight = True

    def end(self) -> None:
        """The FETCH returned (answered or refused): it broke nothing."""
        with self.services.sessions() as session, session.begin():
            mailboxes.fetch_ends(session, self.mailbox, self.services.now())
        self.in_flight = False

    def cleared(self, uidvalidity: int, stored: Iterable[int]) -> None:
        """These messages are stored: their suspicion and strikes go."""
        wanted = list(stored)
        if wanted:
            with self.services.sessions() as session, session.begin():
                mailboxes.fetched(session, self.cursor_key, uidvalidity, wanted)

    def known(self, uidvalidity: int) -> dict[int, Record]:
        """The messages of this UIDVALIDITY with a record."""
        with self.services.sessions() as session:
            return {uid: Record(s.suspect, s.strikes, s.failed_at is not None, s.reason or "")
                    for uid, s in mailboxes.strikes_of(session, self.cursor_key,
                                                       uidvalidity).items()}

    def strike(self, uidvalidity: int, uid: int, reason: str) -> int:
        with self.services.sessions() as session, session.begin():
            return mailboxes.message_failed(session, self.cursor_key, uidvalidity, uid,
                                            self.services.now(), reason).strikes

    def give_up(self, uidvalidity: int, uid: int, reason: str) -> None:
        with self.services.sessions() as session, session.begin():
            mailboxes.give_up(session, self.cursor_key, uidvalidity, uid, self.services.now(),
                              reason)


@dataclass
class MoveRetry:
    """When to try moving committed mail again after a refused move: ``first`` seconds
    doubling to ``cap``. Kept by the poller across connections; a success resets it."""

    first: float = 5.0
    cap: float = 300.0
    monotonic: Callable[[], float] = time.monotonic
    failures: int = 0
    next_at: float = 0.0

    def due(self) -> bool:
        return self.monotonic() >= self.next_at

    def failed(self) -> float:
        delay = min(self.cap, self.first * 2.0 ** self.failures)
        self.failures += 1
        self.next_at = self.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.next_at = 0, 0.0


@dataclass
class Progress:
    """Progress lines for a backlog: stored so far, remaining, rate."""

    name: str
    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    last_logged: float = field(default_factory=time.monotonic)
    logged_at: int = 0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.done >= self.total:
            return
        if (self.done - self.logged_at >= PROGRESS_EVERY_MESSAGES
                or now - self.last_logged >= PROGRESS_EVERY_S):
            rate = self.done / max(now - self.started, 1e-6)
            log.info("imap[%s]: backlog: %d of %d stored so far, %d remaining, %.0f/s",
                     self.name, self.done, self.total, self.total - self.done, rate)
            self.last_logged, self.logged_at = now, self.done


# --- the cursor ---------------------------------------------------------------------------

def load_cursor(services: Services, mailbox: str, uidvalidity: int) -> int:
    with services.sessions() as session:
        last = session.scalar(select(ImapCursor.last_uid).where(
            ImapCursor.mailbox == mailbox, ImapCursor.uidvalidity == uidvalidity))
    return int(last or 0)


def previous_uidvalidities(services: Services, mailbox: str, current: int) -> list[int]:
    with services.sessions() as session:
        return [int(v) for v in session.scalars(select(ImapCursor.uidvalidity).where(
            ImapCursor.mailbox == mailbox, ImapCursor.uidvalidity != current))]


def advance_cursor(services: Services, mailbox: str, uidvalidity: int, uid: int) -> None:
    """Move the cursor forward to ``uid`` (never back: two pollers on one mailbox are safe)."""
    for _attempt in range(2):
        try:
            with services.sessions() as session, session.begin():
                row = session.scalar(select(ImapCursor).where(
                    ImapCursor.mailbox == mailbox, ImapCursor.uidvalidity == uidvalidity
                ).with_for_update())
                if row is None:
                    session.add(ImapCursor(mailbox=mailbox, uidvalidity=uidvalidity,
                                           last_uid=uid, updated_at=services.now()))
                elif uid > row.last_uid:
                    row.last_uid, row.updated_at = uid, services.now()
            return
        except IntegrityError:
            continue   # another poller created the row first; update it instead
    raise RuntimeError(f"could not advance the IMAP cursor of {mailbox!r}")


# --- one pass -----------------------------------------------------------------------------

def chunks(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def cursor_key_of(box: ImapConfig) -> str:
    # RFC 3501 scopes UIDVALIDITY to one folder of one account; the config name tells
    # accounts apart, the folder name folders, so renaming either starts afresh.
    return f"{box.name}:{box.folder}"[:200]


# Errors that are not one message's fault: the database or the disk. They end the pass
# (nothing acknowledged, read again later) instead of striking the message.
OUTAGES: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError)


class FolderSync:
    """Reads one configured folder on a logged-in client.

    ``accept`` is the ingest door as the shell wires it (``App.accept``: commit the bytes,
    then enqueue their processing); this module only moves mail into it."""

    def __init__(self, services: Services, accept: AcceptFn, box: ImapConfig,
                 client: IMAPClient, capabilities: Iterable[bytes],
                 strikes: FetchStrikes | None = None, moves: MoveRetry | None = None):
        self.services = services
        self.accept = accept
        self.box = box
        self.client = client
        self.capabilities = {c.upper() for c in capabilities}
        self.max_bytes = services.config.smtp_in.max_message_bytes
        self.source = f"imap:{box.name}"
        self.cursor_key = cursor_key_of(box)
        self.strikes = strikes if strikes is not None else FetchStrikes(
            services, box.name, self.cursor_key)
        self.moves = moves if moves is not None else MoveRetry()
        self._too_large_size: dict[int, int] = {}    # found while reading alone
        self._failed_reason: dict[int, str] = {}     # given up in this pass, for the log
        self._new_connection = True
        if box.processed_folder and box.processed_folder == box.folder:
            raise FolderProblem(f"processed_folder is the folder being read ({box.folder!r})")
        address = (box.username if "@" in box.username
                   else services.config.desk.support_addresses[0])
        # IMAP has no envelope: the mailbox's own address stands in for RCPT TO.
        self.envelope = Envelope(mail_from=None, rcpt_tos=(address.lower(),))

    @property
    def can_move(self) -> bool:
        return b"MOVE" in self.capabilities

    def select(self) -> int:
        try:
            info = self.client.select_folder(self.box.folder)
        except IMAPClientAbortError:
            raise
        except IMAPClientError:
            if not self.client.folder_exists(self.box.folder):
                raise FolderProblem(f"folder {self.box.folder!r} does not exist") from None
            raise   # there, but busy or locked: an ordinary retry
        return int(info[b"UIDVALIDITY"])

    def ensure_processed_folder(self) -> None:
        folder = self.box.processed_folder
        if folder and not self.client.folder_exists(folder):
            self.client.create_folder(folder)
            log.info("imap[%s]: created folder %r", self.box.name, folder)

    def run(self, stop: threading.Event | None = None) -> SyncStats:
        stats = SyncStats()
        # Once per connection (this object lives as long as one): a FETCH still recorded
        # as in flight died with the previous connection.
        blamed, self._new_connection = (
            self.strikes.connection_lost() if self._new_connection else 0), False
        if blamed:
            log.warning("imap[%s]: the last connection broke during a FETCH of %d message(s): "
                        "reading %s", self.box.name, blamed,
                        "it alone" if blamed == 1 else "them one at a time")
        uidvalidity = stats.uidvalidity = self.select()
        self._take_exists()
        last = load_cursor(self.services, self.cursor_key, uidvalidity)
        if last == 0:
            older = previous_uidvalidities(self.services, self.cursor_key, uidvalidity)
            if older:
                log.warning("imap[%s]: UIDVALIDITY of %r changed (%s -> %s): reading the whole "
                            "folder again; already-accepted mail is recognised and skipped",
                            self.box.name, self.box.folder, max(older), uidvalidity)
        known = self.strikes.known(uidvalidity)
        new_uids, leftovers = self._pending_uids(last, uidvalidity, known)
        if leftovers:
            # Committed (before a crash, or while moving failed) but never moved.
            if self.moves.due():
                log.info("imap[%s]: moving %d message(s) stored earlier but not yet moved",
                         self.box.name, len(leftovers))
            self._acknowledge(leftovers, stats)
        progress = Progress(self.box.name, len(new_uids))
        for batch in chunks(new_uids, self.box.batch_size):
            if stop is not None and stop.is_set():
                break
            self._batch(batch, uidvalidity, stats, known)
            progress.advance(len(batch))
        stats.new_mail_announced = self._take_exists()
        return stats

    def _take_exists(self) -> bool:
        """Whether the server announced new mail (EXISTS) since the last call. Mail that
        arrives during a pass is announced in reply to one of its commands, where imaplib
        files the response away, and never again to IDLE: without this check it would
        wait for the next IDLE re-issue. (imaplib keeps such responses in
        ``untagged_responses``; imapclient has no public accessor for them.)"""
        pending = getattr(self.client._imap, "untagged_responses", {})
        return bool(pending.pop("EXISTS", None))

    def _pending_uids(self, last: int, uidvalidity: int,
                      known: dict[int, Record]) -> tuple[list[int], list[int]]:
        """(new UIDs above the cursor, committed leftovers still to move). Messages given
        up on are left out: by their flag on the server, and by the database record in
        case setting the flag failed (then it is set again)."""
        not_skipped: list[object] = []
        for keyword in SKIPPED_KEYWORDS:
            not_skipped += ["NOT", "KEYWORD", keyword.decode()]
        if self.box.processed_folder:
            # The folder only holds unprocessed mail, so listing it all stays cheap.
            uids = sorted(int(u) for u in self.client.search(not_skipped or ["ALL"]))
        else:
            # With \Seen the folder keeps its history: only ask for what is above the
            # cursor ("N:*" always includes the highest UID, hence the filter below).
            uids = sorted(int(u) for u in self.client.search(
                ["UID", f"{last + 1}:*", *not_skipped]))
        given_up = [u for u in uids if known.get(u, NO_RECORD).given_up]
        if given_up:
            self._flag(given_up, [FLAGGED, FAILED], "failed")
        uids = [u for u in uids if u not in set(given_up)]
        return [u for u in uids if u > last], [u for u in uids if u <= last]

    def _batch(self, uids: list[int], uidvalidity: int, stats: SyncStats,
               known: dict[int, Record]) -> None:
        if any(known.get(u, NO_RECORD).suspect or known.get(u, NO_RECORD).strikes
               for u in uids):
            self._one_at_a_time(uids, uidvalidity, stats, known)
            return
        started = time.perf_counter()
        sizes = self._fetch(uids, uidvalidity, SIZE)
        too_large = [u for u in uids if int(sizes.get(u, {}).get(SIZE, 0)) > self.max_bytes]
        wanted = [u for u in uids if u in sizes and u not in too_large]
        bodies = self._fetch(wanted, uidvalidity, BODY)
        stats.fetch_s += time.perf_counter() - started

        started = time.perf_counter()
        done: list[int] = []
        alone: list[int] = [u for u in uids if u not in sizes]
        for uid in wanted:
            raw = bodies.get(uid, {}).get(BODY)
            if not isinstance(raw, bytes):
                alone.append(uid)
                continue
            try:
                self._store(raw, stats)
            except MessageProblem:
                alone.append(uid)
                continue
            done.append(uid)
        stats.accept_s += time.perf_counter() - started
        # What failed within the batch is retried alone, each with its own strikes.
        failed: list[int] = []
        for uid in sorted(alone):
            outcome = self._read_alone(uid, uidvalidity, stats, strikes=0)
            {"done": done, "too_large": too_large, "failed": failed}[outcome].append(uid)
        if alone:
            self.strikes.cleared(uidvalidity, done)
        # Cursor before acknowledgement: what is acknowledged must already be committed.
        advance_cursor(self.services, self.cursor_key, uidvalidity, max(uids))
        self._skip(too_large, failed, sizes, stats, uidvalidity)
        if done:
            self._acknowledge(sorted(done), stats)

    def _one_at_a_time(self, uids: list[int], uidvalidity: int, stats: SyncStats,
                       known: dict[int, Record]) -> None:
        """A batch with a message that broke a connection: read each message alone and
        commit the cursor after each, so whatever comes before the bad one is kept."""
        done: list[int] = []
        for uid in uids:
            record = known.get(uid, NO_RECORD)
            outcome = self._read_alone(uid, uidvalidity, stats, strikes=record.strikes,
                                       reason=record.reason)
            advance_cursor(self.services, self.cursor_key, uidvalidity, uid)
            if outcome == "done":
                done.append(uid)
            else:
                self._skip([uid] if outcome == "too_large" else [],
                           [uid] if outcome == "failed" else [], {}, stats, uidvalidity)
        self.strikes.cleared(uidvalidity, done)
        if done:
            self._acknowledge(done, stats)

    def _read_alone(self, uid: int, uidvalidity: int, stats: SyncStats, *, strikes: int,
                    reason: str = "") -> str:
        """Size, body and store of one message, retried alone until ``STRIKE_LIMIT``
        strikes: "done", "too_large" or "failed" (given up, recorded with the reason)."""
        attempts = 0   # the database count may be reset by another process: bound it here too
        while strikes < STRIKE_LIMIT and attempts < STRIKE_LIMIT:
            attempts += 1
            try:
                size = self._fetch([uid], uidvalidity, SIZE, alone=True)[uid].get(SIZE)
                if size is None:
                    raise MessageProblem("the server sent no RFC822.SIZE")
                if int(size) > self.max_bytes:
                    self._too_large_size[uid] = int(size)
                    return "too_large"
                raw = self._fetch([uid], uidvalidity, BODY, alone=True)[uid].get(BODY)
                if not isinstance(raw, bytes):
                    raise MessageProblem("the server sent no body")
                self._store(raw, stats)
                return "done"
            except MessageProblem as exc:
                reason = str(exc)
                strikes = self.strikes.strike(uidvalidity, uid, reason)
                log.warning("imap[%s]: UID %s failed (%s), strike %d of %d", self.box.name,
                            uid, reason, strikes, STRIKE_LIMIT)
        reason = reason or "it failed too often"
        self.strikes.give_up(uidvalidity, uid, reason)
        self._failed_reason[uid] = reason
        return "failed"

    def _fetch(self, uids: list[int], uidvalidity: int, item: bytes, *,
               alone: bool = False) -> dict[int, dict[bytes, Any]]:
        """FETCH one item for ``uids``, recorded as in flight while it runs. A refused
        FETCH of several messages is repeated one by one; ``alone``: a refusal or a
        missing answer is this message's problem (``MessageProblem``)."""
        if not uids:
            return {}
        what = "BODY.PEEK[]" if item == BODY else item.decode()
        self.strikes.begin(uidvalidity, uids)
        try:
            found = self.client.fetch(uids, [what])
        except IMAPClientAbortError:
            raise   # the connection is gone: the next one blames what was in flight
        except IMAPClientError as exc:
            self.strikes.end()
            if alone or len(uids) == 1:
                raise MessageProblem(f"FETCH {what} refused: {_text(exc)}") from None
            log.warning("imap[%s]: FETCH %s of %d messages refused (%s); fetching them one "
                        "by one", self.box.name, what, len(uids), _text(exc))
            out: dict[int, dict[bytes, Any]] = {}
            for uid in uids:
                try:
                    out.update(self._fetch([uid], uidvalidity, item, alone=True))
                except MessageProblem:
                    continue   # retried alone by the caller, with strikes
            return out
        answered = {int(u): d for u, d in found.items() if item in d}
        self.strikes.end()
        if alone and uids[0] not in answered:
            raise MessageProblem(f"the server answered FETCH {what} without it")
        return answered

    def _store(self, raw: bytes, stats: SyncStats) -> None:
        try:
            result = self.accept(raw, self.envelope, self.source)
        except OUTAGES:
            raise   # the database or the disk: not this message's fault
        except Exception as exc:
            raise MessageProblem(f"could not be stored: {type(exc).__name__}: "
                                 f"{_text(exc)}") from None
        stats.fetched += 1
        if result.created:
            stats.accepted += 1
        else:
            stats.duplicates += 1

    def _skip(self, too_large: list[int], failed: list[int],
              sizes: dict[int, dict[bytes, Any]], stats: SyncStats, uidvalidity: int) -> None:
        for uid in too_large:
            size = sizes.get(uid, {}).get(SIZE) or self._too_large_size.get(uid)
            # Recorded like a message given up on: kept out of the leftovers to move even
            # if the flag cannot be set, and listed by `postdesk status`.
            self.strikes.give_up(uidvalidity, uid, f"{size} bytes, over "
                                 f"smtp_in.max_message_bytes ({self.max_bytes})")
            log.error("imap[%s]: UID %s is %s bytes, over smtp_in.max_message_bytes (%s): "
                      "not fetched; left in %r flagged %s", self.box.name, uid, size,
                      self.max_bytes, self.box.folder, TOO_LARGE.decode())
        for uid in failed:
            log.error("imap[%s]: UID %s could not be fetched or stored (%s): skipped and left "
                      "in %r flagged %s", self.box.name, uid, self._failed_reason.get(uid),
                      self.box.folder, FAILED.decode())
        if too_large:
            self._flag(too_large, [FLAGGED, TOO_LARGE], "too large")
        if failed:
            self._flag(failed, [FLAGGED, FAILED], "failed")
        stats.skipped += len(too_large) + len(failed)

    def _flag(self, uids: list[int], flags: list[bytes], what: str) -> None:
        try:
            self.client.add_flags(uids, flags)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            # The database already records a message given up on; a too-large one is
            # looked at again next pass. Either way nothing waits for the flag.
            log.warning("imap[%s]: could not flag %d %s message(s) (%s)", self.box.name,
                        len(uids), what, _text(exc))

    def _acknowledge(self, uids: list[int], stats: SyncStats) -> None:
        """Move (or flag \\Seen) committed mail. A refusal is recorded and retried with
        backoff by a later pass; it never stops this pass from fetching."""
        if not self.moves.due():
            stats.unmoved += len(uids)
            return
        started = time.perf_counter()
        try:
            acknowledge(self.client, uids, self.box.processed_folder, can_move=self.can_move,
                        uidplus=b"UIDPLUS" in self.capabilities)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            delay = self.moves.failed()
            stats.unmoved += len(uids)
            stats.move_error = _text(exc)
            log.warning("imap[%s]: could not %s %d stored message(s) (%s); fetching goes on, "
                        "moving is retried in %.0f s", self.box.name,
                        f"move to {self.box.processed_folder!r}" if self.box.processed_folder
                        else "flag \\Seen", len(uids), stats.move_error, delay)
            return
        self.moves.succeeded()
        stats.acknowledged += len(uids)
        stats.acknowledge_s += time.perf_counter() - started


def _text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if text[:2] in ("b'", 'b"') and text[-1:] == text[1]:
        text = text[2:-1]   # imaplib reprs the server's bytes
    return text[:300]


def acknowledge(client: IMAPClient, uids: list[int], processed_folder: str | None, *,
                can_move: bool, uidplus: bool) -> None:
    """Mark committed mail done on the server: move it out of the way, or flag it read."""
    if not processed_folder:
        client.add_flags(uids, [SEEN])
        return
    if can_move:
        client.move(uids, processed_folder)
        return
    client.copy(uids, processed_folder)
    client.add_flags(uids, [DELETED])
    if uidplus:
        client.uid_expunge(uids)
    else:
        # Without UIDPLUS, EXPUNGE removes every \Deleted message in the folder, which in
        # a mailbox reserved for the desk is only ours.
        client.expunge()
