"""One pass over one IMAP folder: fetch what is new, commit it, then acknowledge it.

The order is what makes it exactly-once across crashes:

1. fetch ``BODY.PEEK[]`` (flags untouched) by UID above the committed cursor of
   (mailbox name and folder, UIDVALIDITY);
2. ``accept`` each message — the raw bytes are committed, idempotently by sha256;
3. advance the cursor past the batch;
4. only then move the batch to ``processed_folder`` (or flag it ``\\Seen``).

A crash before 3 re-fetches the batch and ``accept`` returns the rows it already has. A
crash between 3 and 4 leaves committed mail in the folder at or below the cursor: with a
``processed_folder`` every pass moves such leftovers first. A new UIDVALIDITY has no
cursor yet, so the whole folder is read again; sha256 (``accept``) and Message-ID (the
pipeline) de-duplication make that harmless.

Mail over ``smtp_in.max_message_bytes`` is never downloaded: it is logged as an error,
flagged ``\\Flagged`` plus the keyword ``$PostdeskTooLarge`` and left in the folder for a
person to deal with, the same limit SMTP enforces with ``552``. A message the server
cannot deliver to us is logged, flagged ``$PostdeskFailed`` and skipped likewise, so one
bad message never stops the rest of the batch. Some servers (Dovecot) answer such a FETCH
with ``BYE`` and hang up; ``FetchStrikes`` remembers across reconnections which FETCH was
in flight, retries its messages one by one, and gives up on a message that broke the
connection twice on its own."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from imapclient import DELETED, FLAGGED, SEEN, IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from postdesk.ingest.accept import AcceptFn, Envelope
from postdesk.storage.models import ImapCursor
from postdesk.workflow.desk.services import Services
from postdesk.workflow.rules.config import ImapConfig

log = logging.getLogger("postdesk.imap")

TOO_LARGE = b"$PostdeskTooLarge"
FAILED = b"$PostdeskFailed"
SKIPPED_KEYWORDS = (TOO_LARGE, FAILED)


class FolderProblem(Exception):
    """The configured folders cannot be used: a configuration problem, retried slowly."""


@dataclass
class SyncStats:
    """What one pass did; the timings feed the benchmark."""

    uidvalidity: int = 0
    fetched: int = 0
    accepted: int = 0          # new raw messages
    duplicates: int = 0        # bytes already accepted (re-scan, crash before the cursor)
    skipped: int = 0           # too large or unreadable, left flagged on the server
    acknowledged: int = 0      # moved or flagged \Seen, leftovers included
    new_mail_announced: bool = False   # EXISTS arrived during the pass: look again
    fetch_s: float = 0.0
    accept_s: float = 0.0
    acknowledge_s: float = 0.0

    def add(self, other: SyncStats) -> None:
        for name in ("fetched", "accepted", "duplicates", "skipped", "acknowledged",
                     "fetch_s", "accept_s", "acknowledge_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.uidvalidity = other.uidvalidity or self.uidvalidity


@dataclass
class FetchStrikes:
    """Which body FETCH was under way when a connection died, kept by the poller across
    reconnections (in memory: a restart simply starts the count again)."""

    limit: int = 2
    in_flight: tuple[int, tuple[int, ...]] | None = None
    suspects: set[tuple[int, int]] = field(default_factory=set)
    strikes: Counter[tuple[int, int]] = field(default_factory=Counter)

    def begin(self, uidvalidity: int, uids: Sequence[int]) -> None:
        self.in_flight = (uidvalidity, tuple(uids))

    def done(self) -> None:
        if self.in_flight is not None:
            validity, uids = self.in_flight
            for uid in uids:
                self.suspects.discard((validity, uid))
                self.strikes.pop((validity, uid), None)
        self.in_flight = None

    def connection_lost(self) -> None:
        """Called when a new connection starts: a FETCH still in flight died with the last."""
        if self.in_flight is None:
            return
        validity, uids = self.in_flight
        if len(uids) == 1:
            self.strikes[(validity, uids[0])] += 1
        else:
            self.suspects.update((validity, uid) for uid in uids)
        self.in_flight = None

    def one_by_one(self, uidvalidity: int, uid: int) -> bool:
        key = (uidvalidity, uid)
        return key in self.suspects or self.strikes[key] > 0

    def poisoned(self, uidvalidity: int, uid: int) -> bool:
        return self.strikes[(uidvalidity, uid)] >= self.limit


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


class FolderSync:
    """Reads one configured folder on a logged-in client.

    ``accept`` is the ingest door as the shell wires it (``App.accept``: commit the bytes,
    then enqueue their processing); this module only moves mail into it."""

    def __init__(self, services: Services, accept: AcceptFn, box: ImapConfig,
                 client: IMAPClient, capabilities: Iterable[bytes],
                 strikes: FetchStrikes | None = None):
        self.services = services
        self.accept = accept
        self.strikes = strikes if strikes is not None else FetchStrikes()
        self.box = box
        self.client = client
        self.capabilities = {c.upper() for c in capabilities}
        self.max_bytes = services.config.smtp_in.max_message_bytes
        self.source = f"imap:{box.name}"
        # RFC 3501 scopes UIDVALIDITY to one folder of one account; the config name tells
        # accounts apart, the folder name folders, so renaming either starts afresh.
        self.cursor_key = f"{box.name}:{box.folder}"[:200]
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
        self.strikes.connection_lost()
        uidvalidity = stats.uidvalidity = self.select()
        self._take_exists()
        last = load_cursor(self.services, self.cursor_key, uidvalidity)
        if last == 0:
            older = previous_uidvalidities(self.services, self.cursor_key, uidvalidity)
            if older:
                log.warning("imap[%s]: UIDVALIDITY of %r changed (%s -> %s): reading the whole "
                            "folder again; already-accepted mail is recognised and skipped",
                            self.box.name, self.box.folder, max(older), uidvalidity)
        new_uids, leftovers = self._pending_uids(last)
        if leftovers:
            # Committed before a crash but never moved: finish the job.
            log.info("imap[%s]: moving %d message(s) committed before an interruption",
                     self.box.name, len(leftovers))
            self._acknowledge(leftovers, stats)
        for batch in chunks(new_uids, self.box.batch_size):
            if stop is not None and stop.is_set():
                break
            self._batch(batch, uidvalidity, stats)
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

    def _pending_uids(self, last: int) -> tuple[list[int], list[int]]:
        """(new UIDs above the cursor, committed leftovers still to move)."""
        not_skipped: list[object] = []
        for keyword in SKIPPED_KEYWORDS:
            not_skipped += ["NOT", "KEYWORD", keyword.decode()]
        if self.box.processed_folder:
            # The folder only holds unprocessed mail, so listing it all stays cheap.
            uids = sorted(int(u) for u in self.client.search(not_skipped or ["ALL"]))
            return [u for u in uids if u > last], [u for u in uids if u <= last]
        # With \Seen the folder keeps its history: only ask for what is above the cursor
        # ("N:*" always includes the highest UID, hence the filter).
        uids = self.client.search(["UID", f"{last + 1}:*", *not_skipped])
        return sorted(int(u) for u in uids if int(u) > last), []

    def _batch(self, uids: list[int], uidvalidity: int, stats: SyncStats) -> None:
        started = time.perf_counter()
        sizes = self.client.fetch(uids, ["RFC822.SIZE"])
        too_large = [u for u in uids if u in sizes
                     and int(sizes[u].get(b"RFC822.SIZE", 0)) > self.max_bytes]
        poisoned = [u for u in uids if self.strikes.poisoned(uidvalidity, u)]
        wanted = [u for u in uids if u in sizes and u not in too_large and u not in poisoned]
        if any(self.strikes.one_by_one(uidvalidity, u) for u in wanted):
            bodies: dict[int, bytes] = {}
            for uid in wanted:
                bodies.update(self._fetch_bodies([uid], uidvalidity))
        else:
            bodies = self._fetch_bodies(wanted, uidvalidity)
        stats.fetch_s += time.perf_counter() - started

        started = time.perf_counter()
        done: list[int] = []
        failed: list[int] = list(poisoned)
        for uid in wanted:
            raw = bodies.get(uid)
            if raw is None:
                failed.append(uid)
                continue
            result = self.accept(raw, self.envelope, self.source)
            stats.fetched += 1
            if result.created:
                stats.accepted += 1
            else:
                stats.duplicates += 1
            done.append(uid)
        stats.accept_s += time.perf_counter() - started

        for uid in too_large:
            log.error("imap[%s]: UID %s is %s bytes, over smtp_in.max_message_bytes (%s): "
                      "not fetched; left in %r flagged %s", self.box.name, uid,
                      sizes[uid].get(b"RFC822.SIZE"), self.max_bytes, self.box.folder,
                      TOO_LARGE.decode())
        for uid in failed:
            log.error("imap[%s]: UID %s could not be fetched: skipped and left in %r "
                      "flagged %s", self.box.name, uid, self.box.folder, FAILED.decode())
        # Cursor before acknowledgement: what is acknowledged must already be committed.
        advance_cursor(self.services, self.cursor_key, uidvalidity, max(uids))
        if too_large:
            self.client.add_flags(too_large, [FLAGGED, TOO_LARGE])
        if failed:
            self.client.add_flags(failed, [FLAGGED, FAILED])
        stats.skipped += len(too_large) + len(failed)
        if done:
            self._acknowledge(done, stats)

    def _fetch_bodies(self, uids: list[int], uidvalidity: int) -> dict[int, bytes]:
        if not uids:
            return {}
        self.strikes.begin(uidvalidity, uids)
        try:
            found = self.client.fetch(uids, ["BODY.PEEK[]"])
            self.strikes.done()
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            self.strikes.done()
            if len(uids) == 1:
                log.warning("imap[%s]: FETCH of UID %s failed: %s", self.box.name, uids[0], exc)
                return {}
            # One bad message fails the whole command on some servers: go one by one.
            log.warning("imap[%s]: FETCH of %d messages failed (%s); fetching one by one",
                        self.box.name, len(uids), exc)
            out: dict[int, bytes] = {}
            for uid in uids:
                out.update(self._fetch_bodies([uid], uidvalidity))
            return out
        return {int(uid): data[b"BODY[]"] for uid, data in found.items()
                if isinstance(data.get(b"BODY[]"), bytes)}

    def _acknowledge(self, uids: list[int], stats: SyncStats) -> None:
        started = time.perf_counter()
        acknowledge(self.client, uids, self.box.processed_folder, can_move=self.can_move,
                    uidplus=b"UIDPLUS" in self.capabilities)
        stats.acknowledged += len(uids)
        stats.acknowledge_s += time.perf_counter() - started


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
