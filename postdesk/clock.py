"""The wall clock: the only place postdesk reads the system time. The shell hands it to
everything else as a ``Clock`` (``workflow.rules.clock``)."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
