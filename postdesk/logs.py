"""Logging for operators: plain text for people, one JSON object a line for log shippers
(``--log-format json`` or ``POSTDESK_LOG_FORMAT=json``), a filter that masks every secret
this process knows, and two filters that keep an outage readable:

- ``RepeatFilter``: of identical warnings (same logger, level and message template), the
  first in each ``window`` is written and the rest are counted; the count is written when
  the window is over (``… 871 more in the last 30 s``), on the next record of any kind or
  at ``flush()``. A 30 s broker cut then writes a handful of lines, not 872.
- ``OutageFilter``: a record carrying a traceback of an *expected* outage — a refused or
  lost connection to the broker, the database or a mail server — is written as one line
  with the error's type and text instead of the traceback. Libraries (pika, Dramatiq)
  log such tracebacks themselves; they say nothing the one line does not.

The standard library has ``logging.Filter`` but no rate limiting; the few libraries that
do it (e.g. ``logging-ratelimit``) drop the count, which is the useful part here."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream
    there was at set-up: a process (or a test) that swaps stderr never leaves a handler
    writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(verbose: bool = False, fmt: str | None = None) -> None:
    handler = _StderrHandler()
    if log_format(fmt) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(REDACT)
    root = logging.getLogger()
    for old in [h for h in root.handlers if REDACT in h.filters]:   # set up before
        root.removeHandler(old)
    root.addHandler(handler)
    install([handler])        # repeated warnings counted, outages without tracebacks
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


DEFAULT_WINDOW_S = 30.0

# Exception types (by module prefix and name, so that optional libraries need not be
# imported) that mean "a server is unreachable right now".
_OUTAGE_TYPES: tuple[tuple[str, str], ...] = (
    ("builtins", "ConnectionError"), ("builtins", "ConnectionRefusedError"),
    ("builtins", "ConnectionResetError"), ("builtins", "BrokenPipeError"),
    ("builtins", "TimeoutError"), ("socket", "gaierror"),
    ("pika", "AMQPConnectionError"), ("pika", "AMQPChannelError"),
    ("pika", "StreamLostError"), ("pika", "ConnectionClosed"), ("pika", "ChannelClosed"),
    ("pika", "ConnectionWrongStateError"), ("pika", "ChannelWrongStateError"),
    ("redis", "ConnectionError"), ("redis", "TimeoutError"),
    ("dramatiq", "ConnectionError"), ("dramatiq", "ConnectionClosed"),
    ("sqlalchemy", "OperationalError"), ("psycopg", "OperationalError"),
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection failure of the expected kind."""
    for cls in type(exc).__mro__:
        module = cls.__module__.split(".", 1)[0]
        if (module, cls.__name__) in _OUTAGE_TYPES:
            return True
    return False


class OutageFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_outage(exc):
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            record.msg = f"{record.msg} ({type(exc).__name__}{': ' + text if text else ''})"
            record.exc_info, record.exc_text = None, None
        return True


@dataclass
class _Window:
    started: float
    suppressed: int = 0
    name: str = ""
    level: int = logging.WARNING
    template: str = ""


class RepeatFilter(logging.Filter):
    """Rate-limits identical records at ``level`` and above, per ``window`` seconds.
    ``emit`` writes the summary lines (the handler's ``handle``, set by ``install``)."""

    def __init__(self, window: float = DEFAULT_WINDOW_S, *, level: int = logging.WARNING,
                 monotonic: Callable[[], float] = time.monotonic,
                 emit: Callable[[logging.LogRecord], object] | None = None):
        super().__init__()
        self.window, self.level, self.monotonic, self.emit = window, level, monotonic, emit
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "postdesk_summary", False):
            return True
        now = self.monotonic()
        self._summarise(lambda w: now - w.started >= self.window)
        if record.levelno < self.level:
            return True
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started < self.window:
                window.suppressed += 1
                return False
            self._windows[key] = _Window(now, 0, record.name, record.levelno, str(record.msg))
        return True

    def flush(self) -> None:
        """Write the counts still pending (at shutdown)."""
        self._summarise(lambda w: True)

    def _summarise(self, due: Callable[[_Window], bool]) -> None:
        with self._lock:
            finished = [(k, w) for k, w in self._windows.items() if due(w)]
            for key, _window in finished:
                del self._windows[key]
        for _key, window in finished:
            if window.suppressed and self.emit is not None:
                first_words = window.template.split("%", 1)[0].strip()[:120]
                record = logging.LogRecord(
                    window.name, window.level, __file__, 0,
                    "… %d more in the last %.0f s like: %s",
                    (window.suppressed, self.window, first_words), None)
                record.postdesk_summary = True
                self.emit(record)


_INSTALLED: list[RepeatFilter] = []


def install(handlers: Iterable[logging.Handler], window: float = DEFAULT_WINDOW_S
            ) -> list[RepeatFilter]:
    """Put both filters on each handler (the repeat filter first, so it keys on the
    message as logged); returns the repeat filters."""
    installed = []
    for handler in handlers:
        if any(isinstance(f, RepeatFilter) for f in handler.filters):
            continue
        repeat = RepeatFilter(window, emit=handler.handle)
        handler.addFilter(repeat)
        handler.addFilter(OutageFilter())
        installed.append(repeat)
    _INSTALLED.extend(installed)
    return installed


def flush() -> None:
    """Write every pending count (the CLI calls it when a process stops)."""
    for repeat in _INSTALLED:
        repeat.flush()
