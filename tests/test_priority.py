"""Initial priority of a ticket and raise-only changes: workflow.priority."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postdesk.workflow.rules.priority import (
    _APOSTROPHES,
    _TOKEN_CHARS,
    DEFAULT_KEYWORD_RULES,
    DEFAULT_REASON,
    ESCALATION_REASON,
    PRIORITIES,
    KeywordRule,
    PriorityDecision,
    _mentions,
    _most_urgent,
    initial_priority,
    is_higher,
    raise_only,
)

KEYWORD = "CLIENTCO-URGENT"


def decide(
    subject: str | None,
    body: str | None = "",
    *,
    escalation_keyword: str | None = KEYWORD,
    keyword_rules: tuple[KeywordRule, ...] = DEFAULT_KEYWORD_RULES,
    default: str = "P3",
) -> PriorityDecision:
    return initial_priority(
        subject,
        body,
        escalation_keyword=escalation_keyword,
        keyword_rules=keyword_rules,
        default=default,
    )


# --- ordering -------------------------------------------------------------------------


def test_priorities_most_urgent_first() -> None:
    assert PRIORITIES == ("P1", "P2", "P3")


@pytest.mark.parametrize(
    ("a", "b", "higher"),
    [
        ("P1", "P2", True),
        ("P1", "P3", True),
        ("P2", "P3", True),
        ("P2", "P1", False),
        ("P3", "P1", False),
        ("P3", "P2", False),
        ("P1", "P1", False),
        ("P2", "P2", False),
        ("P3", "P3", False),
    ],
)
def test_is_higher(a: str, b: str, higher: bool) -> None:
    assert is_higher(a, b) is higher


@pytest.mark.parametrize(("a", "b"), [("P0", "P1"), ("P1", "p2"), ("high", "P3"), ("", "P1")])
def test_is_higher_rejects_unknown_priorities(a: str, b: str) -> None:
    with pytest.raises(ValueError, match="unknown priority"):
        is_higher(a, b)


@pytest.mark.parametrize(
    ("current", "proposed", "result"),
    [
        ("P3", "P1", "P1"),
        ("P3", "P2", "P2"),
        ("P2", "P1", "P1"),
        ("P1", "P3", "P1"),
        ("P1", "P2", "P1"),
        ("P2", "P3", "P2"),
        ("P2", "P2", "P2"),
    ],
)
def test_raise_only_never_lowers(current: str, proposed: str, result: str) -> None:
    assert raise_only(current, proposed) == result


def test_raise_only_rejects_unknown_priorities() -> None:
    with pytest.raises(ValueError):
        raise_only("P2", "P4")


@given(st.sampled_from(PRIORITIES), st.sampled_from(PRIORITIES))
def test_raise_only_is_the_more_urgent_of_the_two(current: str, proposed: str) -> None:
    result = raise_only(current, proposed)
    assert result in (current, proposed)
    assert not is_higher(current, result)
    assert result == min(current, proposed)  # "P1" < "P2" < "P3" as strings


# --- escalation keyword ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("CLIENTCO-URGENT checkout broken", ""),
        ("checkout broken", "Please treat as CLIENTCO-URGENT."),
        ("clientco-urgent", ""),
        ("[ClientCo-Urgent] help", ""),
        ("checkout", "Code word: CLIENTCO-URGENT\nthanks"),
        ("(CLIENTCO-URGENT)", None),
    ],
)
def test_escalation_keyword_makes_p1(subject: str, body: str | None) -> None:
    assert decide(subject, body) == PriorityDecision("P1", "escalation keyword")


@pytest.mark.parametrize(
    "text",
    [
        "CLIENTCO-URGENTLY",
        "XCLIENTCO-URGENT",
        "CLIENTCO-URGENT-NOT",
        "pre-CLIENTCO-URGENT",
        "CLIENTCO_URGENT",
        "CLIENTCO URGENT",
        "CLIENTCOURGENT",
    ],
)
def test_escalation_keyword_must_be_a_whole_token(text: str) -> None:
    assert decide(text, text) == PriorityDecision("P3", "default")


def test_plain_word_keyword_does_not_fire_inside_a_hyphenated_token() -> None:
    assert decide("NOT-URGENT", escalation_keyword="urgent") == PriorityDecision("P3", "default")
    assert decide("urgent: help", escalation_keyword="URGENT") == PriorityDecision(
        "P1", "escalation keyword"
    )


def test_escalation_keyword_beats_keyword_rules_and_default() -> None:
    decision = decide("cannot log in", "CLIENTCO-URGENT", default="P2")
    assert decision == PriorityDecision("P1", "escalation keyword")


def test_escalation_keyword_is_matched_literally() -> None:
    assert decide("A+B", escalation_keyword="a+b").reason == "escalation keyword"
    assert decide("AAB", escalation_keyword="a+b") == PriorityDecision("P3", "default")


@pytest.mark.parametrize("keyword", [None, "", "   "])
def test_no_escalation_keyword(keyword: str | None) -> None:
    assert decide("hello", "world", escalation_keyword=keyword) == PriorityDecision("P3", "default")
    assert decide("outage", escalation_keyword=keyword) == PriorityDecision(
        "P1", 'keyword "outage"'
    )


# --- keyword rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "body", "decision"),
    [
        ("Site down!", "", PriorityDecision("P1", 'keyword "site down"')),
        ("help", "our site is down since 9", PriorityDecision("P1", 'keyword "site is down"')),
        ("Website down", "", PriorityDecision("P1", 'keyword "website down"')),
        ("Outage", "", PriorityDecision("P1", 'keyword "outage"')),
        ("", "An outage-related question", PriorityDecision("P1", 'keyword "outage"')),
        ("Login", "I cannot log in", PriorityDecision("P2", 'keyword "cannot log in"')),
        ("Login", "I CAN'T LOG IN", PriorityDecision("P2", 'keyword "can\'t log in"')),
        ("Login", "I can\u2019t log in", PriorityDecision("P2", 'keyword "can\'t log in"')),
        ("", "we can not log in", PriorityDecision("P2", 'keyword "can not log in"')),
        ("", "Unable to log in", PriorityDecision("P2", 'keyword "unable to log in"')),
        ("", "can't login anymore", PriorityDecision("P2", 'keyword "can\'t login"')),
        ("", "Cannot login.", PriorityDecision("P2", 'keyword "cannot login"')),
    ],
)
def test_default_keyword_rules(subject: str, body: str, decision: PriorityDecision) -> None:
    assert decide(subject, body) == decision


def test_phrase_may_span_whitespace_and_line_breaks() -> None:
    assert decide("", "the site\n   down again").priority == "P1"
    assert decide("", "cannot\tlog  in").priority == "P2"


@pytest.mark.parametrize(
    "text",
    [
        "Outages page typo",  # "outages" is another word
        "site downtime planned",  # "down" is part of "downtime"
        "I can log in fine",
        "new sites down the line",
        "log in cannot",
    ],
)
def test_partial_words_do_not_match(text: str) -> None:
    assert decide(text, text) == PriorityDecision("P3", "default")


def test_most_urgent_matching_rule_wins() -> None:
    body = "I cannot log in, and also there's an outage"
    assert decide("", body) == PriorityDecision("P1", 'keyword "outage"')


def test_custom_rules_and_tie_names_the_first_rule() -> None:
    rules = (
        KeywordRule("slow", "P3"),
        KeywordRule("broken form", "P2"),
        KeywordRule("payment failed", "P2"),
    )
    body = "payment failed, slow pages, broken form"
    assert decide("", body, keyword_rules=rules) == PriorityDecision("P2", 'keyword "broken form"')
    assert decide("slow", keyword_rules=rules) == PriorityDecision("P3", 'keyword "slow"')


def test_later_more_urgent_rule_replaces_earlier_match() -> None:
    rules = (KeywordRule("slow", "P3"), KeywordRule("broken", "P2"), KeywordRule("down", "P1"))
    assert decide("slow and broken", keyword_rules=rules) == PriorityDecision(
        "P2", 'keyword "broken"'
    )
    assert decide("slow, broken, down", keyword_rules=rules) == PriorityDecision(
        "P1", 'keyword "down"'
    )


def test_no_rules_gives_default() -> None:
    assert decide("site down", keyword_rules=()) == PriorityDecision("P3", "default")


@pytest.mark.parametrize("default", ["P1", "P2", "P3"])
def test_default_priority(default: str) -> None:
    assert decide("question", "about invoices", default=default) == PriorityDecision(
        default, "default"
    )


def test_rule_below_default_still_applies() -> None:
    # A rule names a priority, it does not only raise: the default is for "nothing matched".
    rules = (KeywordRule("newsletter", "P3"),)
    assert decide("newsletter tweak", keyword_rules=rules, default="P2") == PriorityDecision(
        "P3", 'keyword "newsletter"'
    )


def test_missing_subject_and_body() -> None:
    assert decide(None, None) == PriorityDecision("P3", "default")


def test_invalid_default_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown priority 'P4'"):
        decide("x", default="P4")


def test_keyword_rule_validation() -> None:
    with pytest.raises(ValueError, match="unknown priority"):
        KeywordRule("site down", "p1")
    with pytest.raises(ValueError, match="non-blank phrase"):
        KeywordRule("   ", "P1")


def test_default_rules_content() -> None:
    as_pairs = {(rule.phrase, rule.priority) for rule in DEFAULT_KEYWORD_RULES}
    assert ("site down", "P1") in as_pairs
    assert ("outage", "P1") in as_pairs
    assert ("cannot log in", "P2") in as_pairs
    assert ("can't log in", "P2") in as_pairs
    assert all(rule.priority in ("P1", "P2") for rule in DEFAULT_KEYWORD_RULES)


@given(st.text(alphabet="abcdefgh ijk\n", max_size=60))
def test_text_without_any_phrase_gives_default(text: str) -> None:
    # The alphabet cannot spell any default phrase (no 'o', 's', 't', 'u', ...).
    assert decide(text, text) == PriorityDecision("P3", "default")


@given(
    before=st.text(alphabet=" .,!\n", max_size=5),
    after=st.text(alphabet=" .,!\n", max_size=5),
)
def test_keyword_found_whatever_punctuation_surrounds_it(before: str, after: str) -> None:
    assert decide("", before + KEYWORD.lower() + after).priority == "P1"


@pytest.mark.parametrize("rule", DEFAULT_KEYWORD_RULES, ids=lambda rule: rule.phrase)
def test_every_rule_is_found_when_it_is_the_only_phrase_a_long_email_names(
        rule: KeywordRule) -> None:
    # The rules are first screened by one pattern of all their phrases: none may be lost
    # there, wherever it sits, wrapped over a line, in capitals or with a curly apostrophe.
    filler = "Thanks for the invoice; the hours look right to us.\n" * 30
    phrase = rule.phrase.upper().replace("'", "\u2019").replace(" ", " \n ", 1)
    decision = initial_priority(None, filler + phrase + ".\n" + filler,
                                escalation_keyword=None, keyword_rules=DEFAULT_KEYWORD_RULES)
    assert decision.priority == rule.priority


def test_a_rule_phrase_inside_a_longer_word_is_screened_out_as_before() -> None:
    assert initial_priority("outages report", "re-logging in", escalation_keyword=None,
                            keyword_rules=DEFAULT_KEYWORD_RULES) == PriorityDecision(
        "P3", "default")


# --- the word scan before the patterns -----------------------------------------------------

def decided_by_patterns_alone(subject: str | None, body: str | None, keyword: str | None,
                              rules: list[KeywordRule]) -> PriorityDecision:
    """``initial_priority`` as it was before it scanned for words first: the oracle."""
    texts = [t.translate(_APOSTROPHES) for t in (subject, body) if t]
    if keyword and keyword.strip() and _mentions(keyword.strip(), texts, _TOKEN_CHARS):
        return PriorityDecision("P1", ESCALATION_REASON)
    # Every rule's pattern, none skipped by a scan for words.
    return _most_urgent(rules, texts) or PriorityDecision("P3", DEFAULT_REASON)


# Words of the rule phrases and near misses, in any case, with letters a case-insensitive
# match pairs with ASCII ones (long s, Kelvin sign, dotless i) and apostrophe variants.
WORDS = ["site", "SITE", "ſite", "website", "web", "down", "DOWN", "is", "outage", "Outage",
         "cannot", "can't", "can\u2019t", "can", "not", "log", "in", "login", "unable",
         "to", "Kan", "\u212aan", "l\u0131ne", "CLIENTCO-URGENT", "clientco", "urgent",
         "printer", "does", "print", "é"]
SEPARATORS = [" ", "  ", "\n", "\t", "-", ".", ", ", "_"]
texts = st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)),
                 max_size=12).map(lambda pairs: "".join(w + s for w, s in pairs))
phrases = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)


@given(subject=st.none() | texts, body=st.none() | texts,
       keyword=st.none() | st.sampled_from(["CLIENTCO-URGENT", "ſite", "urgent", " "]),
       extra=st.lists(st.tuples(phrases, st.sampled_from(PRIORITIES)), max_size=3))
def test_scanning_for_words_first_decides_as_the_patterns_alone(
        subject: str | None, body: str | None, keyword: str | None,
        extra: list[tuple[str, str]]) -> None:
    rules = [*DEFAULT_KEYWORD_RULES, *(KeywordRule(p, prio) for p, prio in extra)]
    assert initial_priority(subject, body, escalation_keyword=keyword,
                            keyword_rules=rules) == decided_by_patterns_alone(
        subject, body, keyword, rules)
