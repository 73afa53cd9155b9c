"""The IMAP poller: one thread per ``[[imap]]`` mailbox, moving mail into ``accept``.

It connects (TLS, STARTTLS or, for loopback tests, plaintext), logs in (password or
OAuth2), reads the folder (``ingest.imap_sync``), then waits for more: IDLE where the
server offers it, otherwise a poll every ``poll_interval``. Even with IDLE the folder is
re-read every ``poll_interval``: IDLE makes pickup fast, the poll makes it certain. IDLE
is re-issued every ``idle_timeout`` and always before the server's 29-minute limit (RFC
2177), and every wait on the server is bounded: a server that does not answer IDLE (or
DONE) within ``poll_interval`` (at most 10 s) is read by polling instead for a while.

Failures never end the thread:
- network errors, a server restart or ``BYE``: reconnect after a capped exponential
  backoff (1 s doubling to 60 s, with jitter so several pollers do not reconnect in step);
- a connection lost during a FETCH: reconnect at once; the message is to blame, and
  ``imap_sync.FetchStrikes`` reads it alone and gives up on it after two strikes;
- a refused login: one clear ERROR line, one alert email to the leads per failure
  episode (kept in the database, so a restart or a second process sends no second one),
  and a retry every ``login_retry`` seconds (5 minutes), never a tight loop;
- a refused move: see ``imap_sync`` (fetching goes on; one alert per episode);
- the database down: a WARNING without a traceback and the same backoff (nothing was
  acknowledged, so reading again later loses nothing);
- a folder that cannot be selected: logged and retried slowly, like a refused login."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from postdesk.ingest.accept import AcceptFn
from postdesk.ingest.imap_alert import MailboxAlerts
from postdesk.ingest.imap_auth import Authenticator, AuthFailed, AuthUnavailable
from postdesk.ingest.imap_sync import (
    OUTAGES,
    FetchStrikes,
    FolderProblem,
    FolderSync,
    MoveRetry,
    SyncStats,
    cursor_key_of,
)
from postdesk.workflow.desk.services import Dispatch, Services
from postdesk.workflow.rules.config import ImapConfig

log = logging.getLogger("postdesk.imap")

SOCKET_TIMEOUT_S = 60.0
LOGIN_RETRY_S = 300.0
# How often a waiting poller looks up from IDLE/sleep to notice stop() and deadlines.
WAKE_SLICE_S = 0.5
# Servers end an IDLE after 30 minutes (RFC 2177 asks clients to re-issue within 29).
IDLE_SERVER_LIMIT_S = 29 * 60.0
# The longest wait for the server to answer IDLE or DONE (a live one answers at once).
IDLE_ANSWER_S = 10.0
# After a server left IDLE unanswered, poll instead for this long before trying again.
IDLE_OFF_S = 30 * 60.0
# A connection lost during a FETCH is re-opened after this pause, without backoff.
REFETCH_DELAY_S = 0.2


class IdleUnanswered(Exception):
    """The server did not answer IDLE or DONE in time: the connection's state is unknown."""


class ConnectionLost(Exception):
    """The server said BYE or closed the connection."""


# Everything that means "the connection is gone, connect again".
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, IMAPClientAbortError, ConnectionLost, AuthUnavailable)


class Backoff:
    """Capped exponential backoff with jitter: 1, 2, 4 ... 60 s, each scaled by 0.5-1.0."""

    def __init__(self, first: float = 1.0, cap: float = 60.0,
                 rng: Callable[[], float] = random.random):
        self.first, self.cap, self.rng = first, cap, rng
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.first * 2.0 ** self.failures)
        self.failures += 1
        return delay * (0.5 + 0.5 * self.rng())

    def reset(self) -> None:
        self.failures = 0


class ImapPoller:
    """Reads one mailbox. It is handed what it needs rather than the App: ``accept``
    (the ingest door, which also enqueues processing) for the mail, ``services`` for the
    cursor and clock, and ``dispatch`` to send the login-failure alert it may queue."""

    def __init__(self, services: Services, accept: AcceptFn, dispatch: Dispatch,
                 box: ImapConfig, *, login_retry: float = LOGIN_RETRY_S,
                 backoff: Backoff | None = None, socket_timeout: float = SOCKET_TIMEOUT_S,
                 move_retry: MoveRetry | None = None):
        self.services = services
        self.accept = accept
        self.dispatch = dispatch
        self.box = box
        self.login_retry = login_retry
        self.backoff = backoff or Backoff()
        self.socket_timeout = socket_timeout
        self.auth = Authenticator(box)
        self.alerts = MailboxAlerts(services, dispatch, box, method=self.auth.method)
        self.stats = SyncStats()            # totals since start, for logs and benchmarks
        # FETCHes that broke a connection (in the database), and when to move again.
        self.strikes = FetchStrikes(services, box.name, cursor_key_of(box))
        self.moves = move_retry or MoveRetry()
        self.idle_off_until = 0.0           # monotonic: poll instead of IDLE until then
        self.unmoved = 0                    # stored mail the last pass could not move
        self.connected = threading.Event()  # set while logged in
        self.waiting = threading.Event()    # set while idling/sleeping between passes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.box.name

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name=f"imap-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("imap[%s]: poller did not stop within %.0f s", self.name, timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_once(self) -> SyncStats:
        """Connect, read everything new, acknowledge it, log out. Errors propagate."""
        client = self._connect()
        try:
            return self._sync(self._folder(client))
        finally:
            _close(client)

    # --- the loop ------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("imap[%s]: polling %s@%s:%s folder %r", self.name, self.box.username,
                 self.box.host, self.box.port, self.box.folder)
        if not (self.box.ssl or self.box.starttls) and not _is_loopback(self.box.host):
            log.warning("imap[%s]: ssl and starttls are both off: the login to %s travels "
                        "in clear text", self.name, self.box.host)
        while not self._stop.is_set():
            try:
                self._session()
            except AuthFailed as exc:
                self._login_failed(str(exc))
            except FolderProblem as exc:
                log.error("imap[%s]: %s; retrying in %.3g s", self.name, exc, self.login_retry)
                self._stop.wait(self.login_retry)
            except IdleUnanswered as exc:
                log.warning("imap[%s]: %s; polling every %s instead of IDLE for %.0f min",
                            self.name, exc, self.box.poll_interval, IDLE_OFF_S / 60)
                self.idle_off_until = time.monotonic() + IDLE_OFF_S
            except NETWORK_ERRORS as exc:
                if self.strikes.in_flight:
                    self.strikes.in_flight = False   # once: a dead server gets the backoff
                    # Lost while a FETCH ran: most likely to a message the server cannot
                    # send. Reconnect now; the strikes read it alone, then skip it.
                    log.warning("imap[%s]: connection lost during a FETCH (%s: %s); "
                                "reconnecting now", self.name, type(exc).__name__,
                                _describe(exc))
                    self._stop.wait(REFETCH_DELAY_S)
                else:
                    self._reconnect_later("connection lost", exc)
            except IMAPClientError as exc:
                # A NO/BAD to a command: the server is up but unhappy; back off the same way.
                self._reconnect_later("server error", exc)
            except OUTAGES as exc:
                # The database (or the disk) is down: an expected outage, no traceback.
                # Nothing was acknowledged, so backing off and reading again loses nothing.
                self._reconnect_later("storage unavailable", exc)
            except Exception as exc:
                log.exception("imap[%s]: unexpected error", self.name)
                self._reconnect_later("unexpected error", exc)
            finally:
                self.connected.clear()
        log.info("imap[%s]: stopped", self.name)

    def _reconnect_later(self, what: str, exc: BaseException) -> None:
        if self._stop.is_set():
            return
        delay = self.backoff.next_delay()
        log.warning("imap[%s]: %s (%s: %s); reconnecting to %s:%s in %.1f s", self.name, what,
                    type(exc).__name__, _describe(exc), self.box.host, self.box.port, delay)
        self._stop.wait(delay)

    def _login_failed(self, error: str) -> None:
        since = ""
        try:
            episode = self.alerts.login_failed(error)
            since = f" (failing since {episode.started.isoformat(timespec='seconds')})"
        except OUTAGES as exc:
            log.warning("imap[%s]: could not record the login failure: %s", self.name,
                        _describe(exc))
        log.error("imap[%s]: LOGIN FAILED for %s at %s:%s using %s: %s; mail in %r is not "
                  "being read%s; retrying in %.3g s", self.name, self.box.username,
                  self.box.host, self.box.port, self.auth.method, error, self.box.folder,
                  since, self.login_retry)
        self._stop.wait(self.login_retry)

    def _session(self) -> None:
        client = self._connect()
        clean = False
        try:
            sync = self._folder(client)
            while not self._stop.is_set():
                stats = self._sync(sync)
                # A full pass worked: the connection is healthy again.
                self.backoff.reset()
                if stats.new_mail_announced or stats.fetched or stats.acknowledged:
                    # More may have come while this pass ran: look again before waiting.
                    continue
                idle = (b"IDLE" in sync.capabilities
                        and time.monotonic() >= self.idle_off_until)
                if not self._wait(client, idle):
                    break   # time to reconnect (fresh OAuth2 token) or stop
            clean = True
        finally:
            # After an error the connection may be half dead: a LOGOUT could hang until
            # the socket timeout, so just close it.
            _close(client, logout=clean)

    # --- connecting ----------------------------------------------------------------------
    def _connect(self) -> IMAPClient:
        box = self.box
        context = ssl.create_default_context() if (box.ssl or box.starttls) else None
        # starttls wins over ssl: STARTTLS starts in plaintext (usually port 143).
        implicit_tls = box.ssl and not box.starttls
        client = IMAPClient(box.host, port=box.port, ssl=implicit_tls, ssl_context=context,
                            timeout=self.socket_timeout)
        try:
            if box.starttls:
                client.starttls(context)
            self.auth.login(client)
        except BaseException:
            _close(client, logout=False)
            raise
        try:
            ended = self.alerts.login_works()
        except BaseException:
            _close(client, logout=False)
            raise
        if ended is not None:
            log.warning("imap[%s]: login works again (failing since %s)", self.name,
                        ended.isoformat(timespec="seconds"))
        self.connected.set()
        return client

    def _folder(self, client: IMAPClient) -> FolderSync:
        sync = FolderSync(self.services, self.accept, self.box, client, client.capabilities(),
                          self.strikes, self.moves)
        sync.ensure_processed_folder()
        return sync

    def _sync(self, sync: FolderSync) -> SyncStats:
        stats = sync.run(self._stop)
        self.stats.add(stats)
        self.alerts.pass_ended(stats)
        self.unmoved = stats.unmoved
        if stats.fetched or stats.skipped or stats.acknowledged:
            log.info("imap[%s]: %d new, %d already had, %d skipped, %d acknowledged",
                     self.name, stats.accepted, stats.duplicates, stats.skipped,
                     stats.acknowledged)
        return stats

    # --- waiting for mail ----------------------------------------------------------------
    def _wait(self, client: IMAPClient, idle: bool) -> bool:
        """Wait for new mail. False: end this session (stop, or reconnect for a new token)."""
        self.waiting.set()
        try:
            return self._wait_for_mail(client, idle)
        finally:
            self.waiting.clear()

    def _wait_for_mail(self, client: IMAPClient, idle: bool) -> bool:
        session_end = self.auth.session_deadline()
        wait_s = self.box.poll_interval.as_timedelta().total_seconds()
        deadline = time.monotonic() + wait_s
        if self.unmoved:
            # Stored mail waits to be moved: look again when the move is due.
            deadline = min(deadline, max(self.moves.next_at, time.monotonic() + WAKE_SLICE_S))
        if idle:
            idle_s = min(self.box.idle_timeout.as_timedelta().total_seconds(),
                         IDLE_SERVER_LIMIT_S - 60.0)
            return self._idle(client, session_end, min(deadline, time.monotonic() + idle_s),
                              answer_s=min(wait_s, IDLE_ANSWER_S))
        while not self._stop.is_set():
            now = time.monotonic()
            if session_end is not None and now >= session_end:
                return False
            if now >= deadline:
                return True
            self._stop.wait(min(WAKE_SLICE_S, deadline - now))
        return False

    def _idle(self, client: IMAPClient, session_end: float | None, deadline: float, *,
              answer_s: float) -> bool:
        # IDLE is for speed, not for correctness: a server can fail to announce mail that
        # lands while another session is busy in the same mailbox (seen with Dovecot), so
        # the folder is still re-read every poll_interval (``deadline``). Waiting for the
        # server's answer to IDLE and to DONE is bounded by ``answer_s``, not by the
        # socket timeout: a server (or a middlebox) that swallows IDLE must not make the
        # mailbox wait a minute per pass.
        with _answer_within(client, answer_s,
                            f"the server did not answer IDLE within {answer_s:.3g} s"):
            client.idle()
        keep_session = True
        silent_wakeups = 0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if session_end is not None and now >= session_end:
                    keep_session = False
                    break
                if now >= deadline:
                    break   # re-read the folder, then IDLE again
                slice_s = min(WAKE_SLICE_S, deadline - now)
                responses = client.idle_check(timeout=slice_s)
                if any(_is_bye(r) for r in responses):
                    raise ConnectionLost("server said BYE")
                if any(_is_new_mail(r) for r in responses):
                    break
                # idle_check swallows EOF: the socket then reads as ready again and again
                # with nothing to parse. A live server never does that several times.
                if not responses and time.monotonic() - now < slice_s / 2:
                    silent_wakeups += 1
                    if silent_wakeups >= 3:
                        raise ConnectionLost("server closed the connection")
                else:
                    silent_wakeups = 0
        except BaseException:
            with contextlib.suppress(*NETWORK_ERRORS, IMAPClientError, IdleUnanswered), \
                    _answer_within(client, answer_s, "no answer to DONE"):
                client.idle_done()
            raise
        with _answer_within(client, answer_s,
                            f"the server did not answer DONE within {answer_s:.3g} s"):
            client.idle_done()
        return keep_session and not self._stop.is_set()


@contextlib.contextmanager
def _answer_within(client: IMAPClient, seconds: float, what: str) -> Iterator[None]:
    """Bound one exchange with the server by ``seconds`` instead of the socket timeout."""
    sock = client.socket()
    previous = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        yield
    except TimeoutError:
        raise IdleUnanswered(what) from None
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)


def _is_bye(response: tuple[object, ...]) -> bool:
    return len(response) > 0 and response[0] == b"BYE"


def _is_new_mail(response: tuple[object, ...]) -> bool:
    return len(response) > 1 and response[1] == b"EXISTS"


def _close(client: IMAPClient, *, logout: bool = True) -> None:
    if logout:
        with contextlib.suppress(Exception):
            client.logout()
            return
    with contextlib.suppress(Exception):
        client.shutdown()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return text[:300]
