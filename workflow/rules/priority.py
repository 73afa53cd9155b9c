"""The priority a new ticket starts with, and how later client emails may change it.

Pure rules: no I/O, no clock. P1 is the most urgent priority.

Matching is case-insensitive and on whole words, so ``"outage"`` does not fire inside
``"outages"`` and a rule phrase may be broken over several spaces or a line wrap
(``"site\\n down"`` still matches ``"site down"``). Typographic apostrophes (``can’t``)
are read as plain ones (``can't``), because mail clients substitute them freely.

The escalation keyword is a code word an org is given, so it must appear as a whole
*token*: a hyphen counts as part of the token, which keeps a plain keyword such as
``URGENT`` from firing inside ``NOT-URGENT``. Rule phrases are ordinary words, so a hyphen
is a boundary for them (``"outage-related"`` matches ``"outage"``).

The caller should pass the new text of the email (quoted history stripped), or an old
quoted ``outage`` will raise the priority of every reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

__all__ = [
    "DEFAULT_KEYWORD_RULES",
    "ESCALATION_REASON",
    "DEFAULT_REASON",
    "PRIORITIES",
    "KeywordRule",
    "Priority",
    "PriorityDecision",
    "check_priority",
    "initial_priority",
    "is_higher",
    "raise_only",
]

Priority = Literal["P1", "P2", "P3"]

# Most urgent first: a priority's index is its rank.
PRIORITIES: tuple[Priority, ...] = ("P1", "P2", "P3")

ESCALATION_REASON = "escalation keyword"
DEFAULT_REASON = "default"

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_WORD_CHARS = r"\w"
_TOKEN_CHARS = r"\w-"


def check_priority(priority: str) -> Priority:
    """Return ``priority`` if it is one of PRIORITIES; raise ValueError otherwise."""
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; expected one of {', '.join(PRIORITIES)}")
    return priority


def is_higher(a: str, b: str) -> bool:
    """True if ``a`` is strictly more urgent than ``b`` (P1 is higher than P2)."""
    return PRIORITIES.index(check_priority(a)) < PRIORITIES.index(check_priority(b))


def raise_only(current: str, proposed: str) -> str:
    """The priority after a rule on a later client email proposed ``proposed``.

    A client email may make a ticket more urgent but never less: lowering is a staff
    decision (``#priority``), so a calm follow-up cannot undo an escalation.
    """
    return proposed if is_higher(proposed, current) else current


@dataclass(frozen=True)
class KeywordRule:
    """A phrase that, found in a new email, suggests a priority."""

    phrase: str
    priority: str

    def __post_init__(self) -> None:
        check_priority(self.priority)
        if not self.phrase.split():
            raise ValueError("a keyword rule needs a non-blank phrase")


@dataclass(frozen=True)
class PriorityDecision:
    priority: str
    reason: str


DEFAULT_KEYWORD_RULES: tuple[KeywordRule, ...] = (
    KeywordRule("site down", "P1"),
    KeywordRule("site is down", "P1"),
    # "site down" cannot match inside "website down": "web" joins "site" into one word.
    KeywordRule("website down", "P1"),
    KeywordRule("website is down", "P1"),
    KeywordRule("outage", "P1"),
    KeywordRule("cannot log in", "P2"),
    KeywordRule("can't log in", "P2"),
    KeywordRule("can not log in", "P2"),
    KeywordRule("unable to log in", "P2"),
    KeywordRule("cannot login", "P2"),
    KeywordRule("can't login", "P2"),
)


def _phrase_body(phrase: str) -> str:
    """The phrase's words, apostrophes made plain, any run of whitespace between them."""
    return r"\s+".join(re.escape(word) for word in phrase.translate(_APOSTROPHES).split())


def _bounded(body: str, token_chars: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![{token_chars}]){body}(?![{token_chars}])", re.IGNORECASE)


@lru_cache(maxsize=512)
def _phrase_pattern(phrase: str, token_chars: str) -> re.Pattern[str]:
    return _bounded(_phrase_body(phrase), token_chars)


@lru_cache(maxsize=64)
def _any_phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern that matches where any of ``phrases`` would (rule phrases' boundaries):
    most emails name no rule phrase, and one scan of the text tells so, where a scan per
    rule costs a pass over the body each."""
    return _bounded(f"(?:{'|'.join(_phrase_body(p) for p in phrases)})", _WORD_CHARS)


def _mentions(phrase: str, texts: Sequence[str], token_chars: str) -> bool:
    """``texts`` already have their apostrophes made plain (``_APOSTROPHES``)."""
    pattern = _phrase_pattern(phrase, token_chars)
    return any(pattern.search(text) for text in texts)


@lru_cache(maxsize=512)
def _words(phrase: str) -> tuple[str, ...] | None:
    """The phrase's words in lower case, or None if it is not ASCII (then only its
    pattern can tell: a case-insensitive match pairs some non-ASCII letters with ASCII
    ones)."""
    plain = phrase.translate(_APOSTROPHES)
    return tuple(plain.lower().split()) if plain.isascii() else None


def _may_mention(phrase: str, lowered: Sequence[str] | None) -> bool:
    """False only where ``phrase`` cannot match: some text must hold each of its words.
    ``lowered``: the texts in lower case, or None when one is not ASCII (then this
    says True). A scan for a few words is a fraction of a scan with the pattern, and
    most emails name no phrase."""
    words = _words(phrase)
    if lowered is None or words is None:
        return True
    return any(all(word in text for word in words) for text in lowered)


def initial_priority(
    subject: str | None,
    body: str | None,
    *,
    escalation_keyword: str | None,
    keyword_rules: Sequence[KeywordRule],
    default: str = "P3",
) -> PriorityDecision:
    """The priority a ticket starts with, and why.

    The org's escalation keyword wins outright (P1). Otherwise the most urgent of the
    matching keyword rules applies (on a tie, the first matching rule in
    ``keyword_rules`` is named in the reason); otherwise ``default``.
    """
    check_priority(default)
    # Apostrophes made plain once, not once per rule: a body can be long.
    texts = [text.translate(_APOSTROPHES) for text in (subject, body) if text]

    # For ASCII texts (most mail) the patterns run only for phrases whose words are all
    # there; on ASCII text a case-insensitive pattern matches what lower case shows.
    lowered = [text.lower() for text in texts] if all(t.isascii() for t in texts) else None

    # A blank keyword would match nothing useful; treat it as "no keyword configured".
    keyword = (escalation_keyword or "").strip()
    if keyword and _may_mention(keyword, lowered) and _mentions(keyword, texts, _TOKEN_CHARS):
        return PriorityDecision("P1", ESCALATION_REASON)

    candidates = [rule for rule in keyword_rules if _may_mention(rule.phrase, lowered)]
    any_rule = (_any_phrase_pattern(tuple(rule.phrase for rule in candidates))
                if candidates else None)
    if any_rule is None or not any(any_rule.search(text) for text in texts):
        return PriorityDecision(default, DEFAULT_REASON)
    return _most_urgent(candidates, texts) or PriorityDecision(default, DEFAULT_REASON)


def _most_urgent(rules: Sequence[KeywordRule], texts: Sequence[str]
                 ) -> PriorityDecision | None:
    """The most urgent of ``rules`` that ``texts`` mention (on a tie, the first)."""
    best: KeywordRule | None = None
    for rule in rules:
        if best is not None and not is_higher(rule.priority, best.priority):
            continue
        if _mentions(rule.phrase, texts, _WORD_CHARS):
            best = rule
    return None if best is None else PriorityDecision(best.priority,
                                                      f'keyword "{best.phrase}"')
