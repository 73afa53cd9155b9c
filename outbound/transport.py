"""Where finished emails go: an SMTP smarthost, or a local maildir when none is set."""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from postdesk.workflow.rules.errors import PermanentError, TransientError

log = logging.getLogger("postdesk.outbound")


class TemporaryFailure(TransientError):
    """Try again later (4xx, connection trouble)."""


class PermanentFailure(PermanentError):
    """Never try again (5xx for every recipient)."""


class Transport(Protocol):
    def deliver(self, key: str, mail_from: str, rcpt_to: Sequence[str], raw: bytes
                ) -> dict[str, str]:
        """Deliver once; return the recipients refused while others were accepted."""


class MaildirTransport:
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

    def deliver(self, key: str, mail_from: str, rcpt_to: Sequence[str], raw: bytes
                ) -> dict[str, str]:
        """The smarthost's 250 to DATA is the commitment: once ``sendmail`` returns, the
        email is delivered whatever happens next. So the dialogue is not a ``with`` block
        (smtplib's ``__exit__`` raises when QUIT is answered with anything but 221, which
        turned a delivered email into a retry and a second copy): QUIT is sent after the
        fact and its answer, or a dropped connection, is only logged."""
        try:
            cls = smtplib.SMTP_SSL if self.use_ssl else smtplib.SMTP
            smtp = cls(self.host, self.port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from None
        try:
            refused = self._transaction(smtp, mail_from, rcpt_to, raw)
        except BaseException:
            smtp.close()
            raise
        _quit_quietly(smtp, self.host)
        # Some recipients refused with the rest accepted: the email is out, and retrying
        # would send the accepted ones a second copy. The caller records them instead.
        return {rcpt: f"{code} {msg!r}" for rcpt, (code, msg) in refused.items()}

    def _transaction(self, smtp: smtplib.SMTP, mail_from: str, rcpt_to: Sequence[str],
                     raw: bytes) -> dict[str, tuple[int, bytes]]:
        """EHLO .. DATA; returns once the smarthost answered 250 to DATA."""
        try:
            smtp.ehlo()
            if self.starttls and not self.use_ssl:
                if not smtp.has_extn("starttls"):
                    raise TemporaryFailure(f"{self.host} does not offer STARTTLS")
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
            return smtp.sendmail(mail_from, list(rcpt_to), raw)
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
