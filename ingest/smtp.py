"""SMTP ingest (aiosmtpd). The server only moves bytes into ``accept``:

- RCPT TO must be a support address (plus-addressed forms included), else 550: never
  an open relay;
- a message over ``max_message_bytes`` gets 552 (aiosmtpd's data_size_limit), and so
  does a ``MAIL FROM ... SIZE=`` over it, at once, before any DATA (aiosmtpd advertises
  SIZE and checks the parameter);
- on DATA the raw message is committed before 250 is answered; if that fails the
  client gets 451 and retries later. Database work runs in a thread so it never blocks
  the event loop.

Limits (``[smtp_in]``): beyond ``max_sessions`` open connections a new one is greeted
with 421 and closed; beyond ``max_recipients`` RCPT TO gets 452 (the client sends the
rest in another transaction); ``idle_timeout`` is aiosmtpd's per-command timeout and
``data_timeout`` bounds a whole DATA phase (421, connection closed). STARTTLS
(``tls_cert``/``tls_key``, ``require_starttls``) and AUTH (``auth_required``, over TLS
only) are aiosmtpd's own, configured through its public ``tls_context`` and
``authenticator`` parameters."""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession

from postdesk.ingest.accept import Envelope, ReceiptFn
from postdesk.mail.tokens import base_address
from postdesk.workflow.rules.config import SmtpInConfig, secret_from_env
from postdesk.workflow.rules.errors import UserError

log = logging.getLogger("postdesk.smtp")


class IngestHandler:
    def __init__(self, support_addresses: Iterable[str], accept: ReceiptFn, *,
                 max_recipients: int = 100):
        self.support_addresses = {a.lower() for a in support_addresses}
        self.accept = accept
        self.max_recipients = max_recipients

    async def handle_RCPT(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        if base_address(address) not in self.support_addresses:
            log.info("refused RCPT TO:<%s> from %s", address, session.peer)
            return "550 5.7.1 Relaying denied: not a support address here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession,
                          envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content or b""
        env = Envelope(mail_from=envelope.mail_from, rcpt_tos=tuple(envelope.rcpt_tos))
        try:
            receipt = await asyncio.to_thread(self.accept, raw, env, "smtp")
        except Exception:
            log.exception("could not store message from %s: answering 451", envelope.mail_from)
            return "451 4.3.0 Temporary storage failure, please try again later"
        return f"250 2.0.0 OK: queued as {receipt.queued_as}"


@dataclass(frozen=True)
class DoorLimits:
    """The door's limits and security, from ``[smtp_in]`` (defaults: RFC 5321's)."""

    max_sessions: int = 100
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    tls_cert: str | None = None
    tls_key: str | None = None
    require_starttls: bool = False
    auth_required: bool = False
    # (login, password) accepted by AUTH; None: AUTH not offered.
    credentials: tuple[str, str] | None = None

    @classmethod
    def from_config(cls, cfg: SmtpInConfig) -> DoorLimits:
        credentials = None
        if cfg.auth_username_env and cfg.auth_password_env:
            login = secret_from_env(cfg.auth_username_env)
            password = secret_from_env(cfg.auth_password_env)
            if not login or not password:
                raise UserError(f"smtp_in.auth_password_env: set the environment variables "
                                f"{cfg.auth_username_env} and {cfg.auth_password_env}")
            credentials = (login, password)
        return cls(max_sessions=cfg.max_sessions,
                   idle_timeout=cfg.idle_timeout.as_timedelta().total_seconds(),
                   data_timeout=cfg.data_timeout.as_timedelta().total_seconds(),
                   tls_cert=cfg.tls_cert, tls_key=cfg.tls_key,
                   require_starttls=cfg.require_starttls, auth_required=cfg.auth_required,
                   credentials=credentials)


class SessionCount:
    """Open sessions of one server; touched only on its event loop thread."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0


class DoorSMTP(SMTP):
    """aiosmtpd's SMTP with a session limit and a DATA deadline, added through the public
    asyncio protocol methods and an ``smtp_DATA`` override (subclassing SMTP is aiosmtpd's
    documented way to extend it)."""

    def __init__(self, handler: Any, *, sessions: SessionCount, data_timeout: float,
                 **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.door_sessions = sessions
        self.door_data_timeout = data_timeout
        self.door_counted = False     # this connection holds one of the sessions
        self.door_refused = False     # greeted with 421: aiosmtpd never started on it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again by aiosmtpd after STARTTLS on the same connection: counted once.
        if not self.door_counted:
            if self.door_sessions.open >= self.door_sessions.limit:
                self.door_refused = True
                log.warning("refused a connection from %s: %d sessions open",
                            transport.get_extra_info("peername"), self.door_sessions.open)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(b"421 4.3.2 Too many connections, try again later\r\n")
                transport.close()
                return
            self.door_sessions.open += 1
            self.door_counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.door_refused:
            return
        if self.door_counted:
            self.door_counted = False
            self.door_sessions.open -= 1
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self.door_refused:
            return False
        return super().eof_received()

    async def smtp_DATA(self, arg: str) -> None:
        # A timer rather than asyncio.wait_for: cancelling aiosmtpd's DATA closes the
        # transport before a 421 could be written. The deadline covers the whole command,
        # storing included; a client told 421 after its message was stored retries, and
        # the same bytes are recognised as the same raw message.
        deadline = asyncio.get_running_loop().call_later(self.door_data_timeout,
                                                         self._data_too_slow)
        try:
            await super().smtp_DATA(arg)
        finally:
            deadline.cancel()

    def _data_too_slow(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        log.info("DATA from %s took longer than %ss: closing",
                 transport.get_extra_info("peername"), self.door_data_timeout)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"421 4.4.2 DATA took too long, closing connection\r\n")
        transport.close()


class EnvAuthenticator:
    """aiosmtpd authenticator for one login whose credentials come from the environment."""

    def __init__(self, login: str, password: str):
        self.login, self.password = login.encode(), password.encode()

    def __call__(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope,
                 mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and hmac.compare_digest(auth_data.login, self.login)
              and hmac.compare_digest(auth_data.password, self.password))
        if not ok:
            log.warning("failed AUTH %s from %s", mechanism, session.peer)
        # handled=False: aiosmtpd answers the failure itself (535)
        return AuthResult(success=ok, handled=False)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"smtp_in.tls_cert: cannot load {cert} / {key}: {exc}") from None
    return context


def check_bindable(host: str | None, port: int) -> None:
    """Bind the listening address and let it go, as asyncio's create_server would bind it
    (SO_REUSEADDR; IPv6 sockets v6-only): raises the OSError a busy port gives."""
    for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


class DoorController(Controller):
    def __init__(self, handler: Any, *, sessions: SessionCount, data_timeout: float,
                 **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.door_sessions = sessions
        self.door_data_timeout = data_timeout

    def start(self) -> None:
        # aiosmtpd binds in its own thread and reports a failed bind only once
        # ready_timeout (10 s) has run out: a port in use is found here, at once.
        check_bindable(self.hostname, self.port)
        super().start()

    def factory(self) -> SMTP:
        return DoorSMTP(self.handler, sessions=self.door_sessions,
                        data_timeout=self.door_data_timeout, **self.SMTP_kwargs)


class SmtpServer:
    def __init__(self, host: str, port: int, max_message_bytes: int,
                 handler: IngestHandler, limits: DoorLimits | None = None):
        limits = limits or DoorLimits()
        extra: dict[str, Any] = {}
        if limits.tls_cert and limits.tls_key:
            extra["tls_context"] = tls_context(limits.tls_cert, limits.tls_key)
            extra["require_starttls"] = limits.require_starttls
        if limits.credentials:
            extra["authenticator"] = EnvAuthenticator(*limits.credentials)
            extra["auth_required"] = limits.auth_required
        self.sessions = SessionCount(limits.max_sessions)
        self.controller = DoorController(handler, hostname=host, port=port,
                                         data_size_limit=max_message_bytes,
                                         server_hostname="postdesk", ready_timeout=10,
                                         timeout=limits.idle_timeout,
                                         sessions=self.sessions,
                                         data_timeout=limits.data_timeout, **extra)

    @property
    def address(self) -> tuple[str, int]:
        return self.controller.hostname, self.controller.port

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
