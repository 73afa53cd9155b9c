"""Is this text an approval ("approved", "ok to deploy")? Pure."""

from __future__ import annotations

import re
from functools import lru_cache

DEFAULT_APPROVALS = ("approved", "signed off", "sign off", "ok to deploy", "okay to deploy",
                     "go ahead and deploy", "happy to sign off")


@lru_cache(maxsize=16)
def _approval_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(r"\s+".join(map(re.escape, p.split())) for p in phrases)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I)


def is_approval(text: str, phrases: tuple[str, ...] = DEFAULT_APPROVALS) -> bool:
    """An approval in the new text, not negated on the same line ("not approved")."""
    pattern = _approval_pattern(phrases)
    for line in text.splitlines():
        match = pattern.search(line)
        if match and not re.search(r"\b(not|n't|no)\s*$", line[:match.start()], re.I):
            return True
    return False
