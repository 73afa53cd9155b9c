"""Where finished emails go: an SMTP smarthost, or a local maildir when none is set."""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Protocol, cast

from postdesk.workflow.rules.errors import PermanentError, TransientError

log = logging.getLogger("postdesk.outbound")


class TemporaryFailure(TransientError):
    """Try again later (4xx, connection trouble)."""


class PermanentFailure(PermanentError):
    """Never try again (5xx for every recipient)."""


class Connection(Protocol):
    def deliver(self, key: str, mail_from: str, rcpt_to: Sequence[str], raw: bytes
                ) -> dict[str, str]:
        """Deliver once; return the recipients refused while others were accepted."""


class Transport(Connection, Protocol):
    def connect(self) -> AbstractContextManager[Connection]:
        """One connection for several deliveries (a send job's), closed when the block
        ends: the caller records each email ``sent`` while the connection is still open,
        so nothing else of the dialogue (QUIT) lies between a delivery and its record."""


class ConnectionlessTransport:
    """A transport with nothing to hold open between deliveries: its connection is
    itself."""

    def connect(self) -> AbstractContextManager[Connection]:
        return nullcontext(cast(Connection, self))


class MaildirTransport(ConnectionlessTransport):
    """Writes each email to ``new/`` of a maildir under a name derived from the outbox
    key, so delivering the same email twice leaves one file."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def deliver(self, key: str, mail_from: str, rcpt_to: Sequence[str], raw: bytes
                ) -> dict[str, str]:
        name = f"{key}.postdesk"
        final = self.root / "new" / name
        if final.exists() or (self.root / "cur" / f"{name}:2,").exists():
            return {}
        tmp = self.root / "tmp" / name
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return {}


class SmtpTransport:
    def __init__(self, host: str, port: int, *, starttls: bool = True, use_ssl: bool = False,
                 username: str | None = None, password: str | None = None,
                 timeout: float = 30.0):
        self.host, self.port = host, port
        self.starttls, self.use_ssl = starttls, use_ssl
        self.username, self.password = username, password
        self.timeout = timeout

    def connect(self) -> SmtpConnection:
        return SmtpConnection(self)

    def deliver(self, key: str, mail_from: str, rcpt_to: Sequence[str], raw: bytes
                ) -> dict[str, str]:
        """One email on a connection of its own."""
        with self.connect() as connection:
            return connection.deliver(key, mail_from, rcpt_to, raw)

    def open(self) -> smtplib.SMTP:
        """Connect and greet (STARTTLS, AUTH): a session ready for MAIL FROM."""
        try:
            cls = smtplib.SMTP_SSL if self.use_ssl else smtplib.SMTP
            smtp = cls(self.host, self.port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from None
        try:
            with _smtp_failures():
                smtp.ehlo()
                if self.starttls and not self.use_ssl:
                    if not smtp.has_extn("starttls"):
                        raise TemporaryFailure(f"{self.host} does not offer STARTTLS")
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp


class SmtpConnection:
    """One SMTP session for the deliveries of one send job: opened at the first, each
    email one MAIL .. DATA transaction, QUIT once when the block ends.

    The smarthost's 250 to DATA is the commitment: once ``sendmail`` returns, the email
    is delivered whatever happens next. So QUIT is sent after the fact, after the caller
    recorded what it sent, and its answer (or a dropped connection) is only logged
    (smtplib's ``__exit__`` raises when QUIT is answered with anything but 221, which
    turned a delivered email into a retry and a second copy). A transaction that fails
    closes the session; the next email of the job opens a new one."""

    def __init__(self, transport: SmtpTransport):
        self.transport = transport
        self._smtp: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._smtp is not None:
            _quit_quietly(self._smtp, self.transport.host)
            self._smtp = None

    def deliver(self, key: str, mail_from: str, rcpt_to: Sequence[str], raw: bytes
                ) -> dict[str, str]:
        if self._smtp is None:
            self._smtp = self.transport.open()
        try:
            with _smtp_failures():
                refused = self._smtp.sendmail(mail_from, list(rcpt_to), raw)
        except BaseException:
            self._smtp.close()
            self._smtp = None
            raise
        # Some recipients refused with the rest accepted: the email is out, and retrying
        # would send the accepted ones a second copy. The caller records them instead.
        return {rcpt: f"{code} {msg!r}" for rcpt, (code, msg) in refused.items()}


@contextmanager
def _smtp_failures() -> Iterator[None]:
    """smtplib's errors as ours: 5xx (or every recipient refused with one) is permanent,
    the rest (4xx, a dropped or refused connection) temporary."""
    try:
        yield
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        if all(code >= 500 for code in codes):
            raise PermanentFailure(f"all recipients refused: {exc.recipients}") from None
        raise TemporaryFailure(f"recipients refused: {exc.recipients}") from None
    except smtplib.SMTPResponseException as exc:
        err = exc.smtp_error.decode(errors="replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        if 500 <= exc.smtp_code < 600:
            raise PermanentFailure(f"{exc.smtp_code} {err}") from None
        raise TemporaryFailure(f"{exc.smtp_code} {err}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from None


def _quit_quietly(smtp: smtplib.SMTP, host: str) -> None:
    """Say goodbye after an accepted DATA; nothing it answers can undo the delivery."""
    try:
        code, message = smtp.docmd("QUIT")
        if code != 221:
            log.info("%s answered QUIT with %s %r after accepting the email", host, code,
                     message)
    except (OSError, smtplib.SMTPException) as exc:
        log.info("%s: QUIT after an accepted email failed: %s", host, exc)
    finally:
        smtp.close()
