"""Logging set-up: plain text for people, one JSON object a line for log shippers
(``--log-format json`` or ``POSTDESK_LOG_FORMAT=json``), and a filter that masks every
secret this process knows wherever it would appear in a log line."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from postdesk.workflow.rules.config import Config, secret_from_env

FORMATS = ("text", "json")
MASK = "***"
NOISY = ("mailparser", "mail-parser", "pika", "dramatiq", "asyncio", "mail.log", "alembic")
# The attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                          "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    """Masks known secret values in the message, its arguments and its extras."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, values: Iterable[str | None]) -> None:
        # Short values would mask ordinary words; a real secret is longer.
        self.secrets.update(v for v in values if v and len(v) >= 6)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, MASK)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, self._clean(value))
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if self._clean(text) != text:
                record.msg = f"{record.msg}\n{self._clean(text)}"
                record.exc_info, record.exc_text = None, None
        return True


REDACT = RedactSecrets()


def log_format(flag: str | None) -> str:
    fmt = flag or os.environ.get("POSTDESK_LOG_FORMAT") or "text"
    return fmt if fmt in FORMATS else "text"


def setup_logging(verbose: bool = False, fmt: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format(fmt) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(REDACT)
    root = logging.getLogger()
    for old in [h for h in root.handlers if REDACT in h.filters]:   # set up before
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def register_secrets(config: Config, secret: bytes) -> None:
    """Every secret the process holds: the HMAC key, passwords named by environment
    variable, and passwords inside the database and broker URLs."""
    desk = config.desk
    envs = [config.smtp_out.password_env if config.smtp_out else None,
            *(box.password_env for box in config.imap)]
    REDACT.add([secret.decode(errors="replace"), desk.secret,
                *(secret_from_env(var) for var in envs),
                url_password(desk.database_url), url_password(desk.broker_url)])
