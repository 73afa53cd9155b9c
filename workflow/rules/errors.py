"""postdesk's one error tree. Every error of ours that crosses a module boundary is one of
three kinds, because each kind has exactly one right reaction:

* ``UserError`` — a person must fix something (a config key, a command's argument, an
  unknown quarantine id). The CLI prints the message and exits 2; never a traceback.
* ``TransientError`` — the world is briefly unavailable (a smarthost's 4xx, a refused
  connection). Try again later: Dramatiq retries with backoff, SMTP answers 451.
* ``PermanentError`` — it will never work (a smarthost's 5xx). Record it and stop.

Database outages reach us as SQLAlchemy's ``OperationalError`` and are treated as
transient where they are caught (``pipeline.process``); they are not wrapped."""

from __future__ import annotations


class PostdeskError(Exception):
    """Base of every error postdesk raises on purpose."""


class UserError(PostdeskError):
    """Something a person must fix; the message says what, naming the key or argument."""


class TransientError(PostdeskError):
    """Retry later; nothing is lost."""


class PermanentError(PostdeskError):
    """Will not succeed however often it is tried."""
