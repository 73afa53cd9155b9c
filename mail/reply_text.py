"""The new text of a reply: quoted history and signatures removed.

Two maintained libraries do the work, each for what it is good at (measured
on the reply corpora of zapier, github, crisp and discourse):

* mail-parser-reply knows the quote headers of many mail clients and
  languages ("On ... wrote:", "Am ... schrieb", "Le ... a écrit", Outlook
  "From:/Sent:" blocks in a dozen languages, "-----Original Message-----").
  Its header regex is used to find where the quoted history starts. Its own
  text output is *not* used: it strips every line (destroying code and list
  indentation, and staff replies go to clients) and it cuts at the first
  "Thanks,"/"Best," line, which loses everything a client writes after
  "Thanks, that worked! But now ...".
* email-reply-parser (GitHub's algorithm) then removes ``>``-quoted blocks,
  "-- " signatures and "Sent from my ..." lines, keeping the original text.

Both miss common attribution lines (Gmail's "2017-11-24 16:32 GMT+01:00 X
<x@y>:", Polish "W dniu ... napisał:", wrapped multi-line "... wrote:",
French Outlook "De : ... Envoyé le : ...", "-------- Original Message
--------" with decorations, mobile footers such as "Get Outlook for iOS").
A small table of extra patterns, applied the same way as the library's, fills
those gaps; it raised agreement with the corpora from 61 % (the two libraries
combined) to 92 % (134 of 146 assertions, see tests/test_reply_text.py).

When the libraries leave nothing of a message that has text (a message that
only quotes, or a bare signature), the unquoted segment, else the whole text,
is returned: an empty ticket update would lose what the sender sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Self

from mailparser_reply.constants import MAIL_LANGUAGES
from mailparser_reply.parser import EmailMessage

if TYPE_CHECKING:
    # email-reply-parser ships no types; this is the part of its class used here, so
    # that the subclass below is checked instead of deriving from ``Any``.
    class ReplyFragments:
        MULTI_QUOTE_HDR_REGEX: re.Pattern[str]
        MULTI_QUOTE_HDR_REGEX_MULTILINE: re.Pattern[str]

        def __init__(self, text: str) -> None: ...
        def read(self) -> Self: ...
        @property
        def reply(self) -> str: ...
else:
    from email_reply_parser import EmailMessage as ReplyFragments

__all__ = ["visible_reply"]

log = logging.getLogger(__name__)

# Every language mail-parser-reply ships except Polish, whose Outlook-header
# pattern fires on a *single* line starting with "Data:" or "Do:" and so
# would cut real replies ("Data: the export is attached"); Polish quote
# headers are covered by the extra patterns below.
_LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "sv", "da", "cs", "ja", "ko", "zh"]

_LIBRARY_HEADER = EmailMessage(text="", languages=list(_LANGUAGES)).HEADER_REGEX

# --- extra quote-header patterns -------------------------------------------

# Verbs of attribution lines ("X wrote:") in the languages clients use.
_ATTRIBUTION_VERB = re.compile(
    r"(?<!\w)(?:wrote|writes|schrieb|geschrieben|a [ée]crit|escribi[óo]|escreveu|ha scritto"
    r"|scrisse|schreef|skrev|kirjoitti|napisa[łl]a?|napsal|написал[аи]?|написав|пише"
    r"|yazd[ıi])(?:\s*\((?:a|а)\))?(?!\w)",
    re.IGNORECASE,
)
# Evidence that a line is an attribution and not prose: a time, a year, an
# address. "As you wrote:" alone must not cut a reply.
_ATTRIBUTION_EVIDENCE = re.compile(r"\d{1,2}[:.]\d{2}|@|\b(?:19|20)\d{2}\b")
_TIME = re.compile(r"\d{1,2}:\d{2}")
# "30.09.2017, 18.30, "John" <john@x.com>:" -- a date and an address, no verb.
_ADDRESS_AT_END = re.compile(r"<[^<>\s]+@[^<>\s]+>\s*:$")
_GMAIL_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{1,2}:\d{2} GMT[+-]\d{1,2}:?\d{2}\b")
_ORIGINAL_MESSAGE = re.compile(
    r"^[*_ ]*-{2,}\s*(?:original message|forwarded message|mensaje original"
    r"|message d'origine|message original|urspr[üu]ngliche nachricht|messaggio originale"
    r"|oorspronkelijk bericht|originalmeddelande|oprindelig meddelelse|alkuper[äa]inen viesti"
    r"|p[ůu]vodn[íi] zpr[áa]va|wiadomo[śs][ćc] oryginalna|исходное сообщение)\s*-{2,}[*_ ]*$",
    re.IGNORECASE,
)
# French Outlook writes "De :" with a space before the colon, which the
# library's French pattern does not accept.
_FRENCH_OUTLOOK_FIELD = re.compile(r"^\*?(?:De|Envoy[ée](?: le)?|[ÀA]|Objet|Date|Cc)\*? ?:", re.I)
_FRENCH_OUTLOOK_FROM = re.compile(r"^\*?(?:De|Message du)\*? ?:", re.IGNORECASE)
# A header block's fields go on after what the library matched when a value
# wraps ("Subject: a long\nsubject\nTo: x"); used only to skip a header that
# opens the message (a forward without comment).
_HEADER_FIELD = re.compile(r"^\*?[^\s:]{1,20}(?: [^\s:]{1,20})?\*? ?:\s*\S")
# Decorative rules and Gmail's tracking mark left at the end of a reply.
_DECORATION = re.compile(r"^(?:([-_=*~#+])\1+|\u1427)$")

_MAX_ATTRIBUTION_LINES = 3
_MAX_ATTRIBUTION_LENGTH = 400
# Quote headers are short lines near the top. The library's regex is slow on
# very long lines (quadratic: 1.5 s for one 750 KB line), so longer lines are
# blanked for the search and only the head of a huge body is searched.
_MAX_HEADER_LINE = 300
_SEARCH_CHARS = 100_000

# Mobile-client footers, from mail-parser-reply's own per-language table
# ("Sent from my", "Gesendet von", "Envoyé depuis"...) plus English variants
# it lacks ("Sent from Outlook", "Sent with Airmail").
_SENT_FROM = re.compile(
    r"^\s*(?:"
    + "|".join(
        [
            MAIL_LANGUAGES[language]["sent_from"]
            for language in _LANGUAGES
            if MAIL_LANGUAGES[language].get("sent_from")
        ]
        + [
            r"Sent from", r"Sent with", r"Sent via", r"Envoy[ée] de mon",
            r"Envoy[ée] [àa] partir de", r"Von meinem",
        ]
    )
    + r")",
    re.IGNORECASE,
)
_ANGLE_LINKS = re.compile(r"<[^<>]*>|https?://\S+")
_MAX_FOOTER_WORDS = 8


def _is_attribution(block: str) -> bool:
    if len(block) > _MAX_ATTRIBUTION_LENGTH:
        return False
    verb = _ATTRIBUTION_VERB.search(block)
    if not block.endswith(":"):
        # Some clients drop the colon: "On ... 08:14 John <j@x.com> wrote".
        # Prose can end in "wrote" too, so ask for both a time and an address.
        return bool(
            verb and verb.end() == len(block) and _TIME.search(block) and "@" in block
        )
    if verb and _ATTRIBUTION_EVIDENCE.search(block):
        return True
    if _ADDRESS_AT_END.search(block) and re.search(r"\d", block):
        return True
    return bool(_GMAIL_ISO_DATE.match(block))


def _continues_attribution(previous: str) -> bool:
    """Whether the line above a found attribution is its wrapped beginning."""
    if previous.endswith(("<", ",", '"', "(")):
        return True
    # "pe 20. lokakuuta 2017 klo 17.50 John Coe" above "<j@x> kirjoitti:"
    return bool(_ATTRIBUTION_EVIDENCE.search(previous)) and not previous.endswith((".", "!", "?"))


# What an ASCII text must contain, lower-cased, for ``_ATTRIBUTION_VERB`` to match in it:
# the ASCII spellings of its verbs (the Cyrillic ones cannot match ASCII text). The pattern
# costs ~40 ns a character (case-insensitive, a look-behind at every position): 85 us
# on an ordinary 2 KB email, where these substring tests take a few.
_ASCII_VERB_STEMS = ("wrote", "writes", "schrieb", "a ecrit", "escribi", "escreveu",
                     "scritto", "scrisse", "schreef", "skrev", "kirjoitti", "napisal",
                     "napsal", "yazdi")


def _may_name_a_verb(text: str) -> bool:
    """False only when ``_ATTRIBUTION_VERB`` cannot match anywhere in ``text``."""
    if not text.isascii():
        return True   # case folding beyond ASCII (e.g. "ſ" matches "s"): the pattern decides
    lowered = text.lower()
    return any(stem in lowered for stem in _ASCII_VERB_STEMS)


def _extra_headers(stripped: list[str]) -> Iterator[tuple[int, int]]:
    """(first line, line after) of quote headers the library does not know."""
    verbs = _may_name_a_verb("\n".join(stripped))
    for end, line in enumerate(stripped):
        if _ORIGINAL_MESSAGE.match(line):
            yield end, end + 1
            continue
        if (
            _FRENCH_OUTLOOK_FROM.match(line)
            and end + 1 < len(stripped)
            and _FRENCH_OUTLOOK_FIELD.match(stripped[end + 1])
        ):
            yield end, end + 2
            continue
        if not line.endswith(":") and not (verbs and _ATTRIBUTION_VERB.search(line)):
            continue
        # An attribution wrapped by the client spans up to three lines; its
        # paragraph starts after a blank line. Prefer the shortest block that
        # qualifies, so a reply line right above "On ... wrote:" is kept,
        # but extend it over a line that was obviously cut mid-attribution.
        start = end
        while start > 0 and stripped[start - 1] and end - start < _MAX_ATTRIBUTION_LINES - 1:
            start -= 1
        for first in range(end, start - 1, -1):
            block = " ".join(stripped[first : end + 1])
            if _is_attribution(block):
                while first > start and _continues_attribution(stripped[first - 1]):
                    first -= 1
                yield first, end + 1
                break


def _searchable(lines: list[str]) -> list[str]:
    """Stripped lines to search for headers; same count, so indexes map back.

    The library strips lines itself before matching; doing it on a copy keeps
    the caller's indentation. Overlong lines and the tail past the search
    window become empty lines.
    """
    out: list[str] = []
    budget = _SEARCH_CHARS
    for line in lines:
        budget -= len(line) + 1
        stripped = line.strip()
        out.append(stripped if budget > 0 and len(stripped) <= _MAX_HEADER_LINE else "")
    return out


# The library's header regex costs ~2 ms on an ordinary 2 KB email even when it finds
# nothing (a dozen languages, lookaheads at every line start). Every one of its patterns
# needs one of these on the lines it matches, so a body with none of them is skipped:
# an attribution ends its line with ":" ("... wrote:", "... schrieb ...:") or a full-width
# "：" (Chinese); a header block ("From: ... / Sent: ...") has at least two lines that start,
# after ">" quotes and "*" markup, with a field name of at most 16 characters and a colon;
# the separator line says "Original Message". tests/test_reply_text.py checks the filter
# against the regex on the reply corpora and on generated lines.
_FIELD_NAME_CHARS = 16


def _field_line(line: str) -> bool:
    colon = line.lstrip("> *").find(":")
    return 0 <= colon <= _FIELD_NAME_CHARS


def _may_have_library_header(stripped: list[str]) -> bool:
    fields = 0
    for line in stripped:
        if not line:
            continue
        if line.endswith((":", "\uff1a")) or "original message" in line.casefold():
            return True
        if _field_line(line):
            fields += 1
            if fields >= 2:
                return True
    return False


def _library_headers(stripped: list[str]) -> Iterator[tuple[int, int]]:
    if not _may_have_library_header(stripped):
        return
    probe = "\n".join(stripped)
    for match in _LIBRARY_HEADER.finditer(probe):
        group = next((i for i in range(1, len(match.groups()) + 1) if match.group(i)), 0)
        begin, finish = match.span(group)
        while begin < finish and probe[begin] == "\n":
            begin += 1
        yield probe.count("\n", 0, begin), probe.count("\n", 0, finish) + 1


def _latest_segment(lines: list[str]) -> str:
    """Text before the first quote header, as mail-parser-reply splits it.

    A message that *starts* with a quote header (a forward without comment,
    or a bottom-posted reply) has nothing above it: the text after that
    header is the candidate instead, up to the next header.
    """
    stripped = _searchable(lines)
    spans = sorted(set(_library_headers(stripped)) | set(_extra_headers(stripped)))
    current = 0
    for first, after in spans:
        if first > current and any(line.strip() for line in lines[current:first]):
            return "\n".join(lines[current:first])
        if after > current:
            # Overlapping or back-to-back headers form one block; its wrapped
            # field lines run on past what the patterns matched.
            current = after
            while current < len(lines) and _HEADER_FIELD.match(lines[current].strip()):
                current += 1
    return "\n".join(lines[current:])


class _LinearReplyFragments(ReplyFragments):
    r"""email-reply-parser with its multi-line "On ... wrote:" joiner disabled.

    That step's pattern (``(?!On.*On\s.+?wrote:)(On\s(.+?)wrote:)`` with
    DOTALL) is cubic in the number of lines starting with "On": 500 such
    lines took 7 s, 1,000 took 56 s -- a worker-stopping email. The quote
    headers it would join are already cut off by ``_latest_segment``, which
    knows wrapped attributions, so nothing is lost (measured on the corpora).
    """

    MULTI_QUOTE_HDR_REGEX = re.compile(r"(?!)")
    MULTI_QUOTE_HDR_REGEX_MULTILINE = re.compile(r"(?!)")


def _without_quotes(text: str) -> str:
    """``>`` quotes, "-- " signatures and "Sent from my" lines removed."""
    return _LinearReplyFragments(text).read().reply


def _without_footer(text: str) -> str:
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if not _SENT_FROM.match(line) or line.rstrip().endswith(":"):
            continue
        if len(_ANGLE_LINKS.sub(" ", line).split()) <= _MAX_FOOTER_WORDS:
            return "\n".join(lines[:index])
    return text


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and (not lines[-1].strip() or _DECORATION.match(lines[-1].strip())):
        lines.pop()
    return "\n".join(lines)


def _has_words(text: str) -> bool:
    return any(char.isalnum() for char in text)


def visible_reply(text: str) -> str:
    """The part of an email body its sender just wrote.

    Quoted history (attribution lines, ``>`` quotes, Outlook headers and
    "Original Message" separators, many languages) and signatures ("-- ",
    "Sent from my iPhone", "Get Outlook for iOS") are removed; indentation
    inside the reply is kept. Never raises; see the module docstring for
    what is returned when the libraries would leave nothing.
    """
    try:
        normalized = text.replace("\r\n", "\n").replace("\r", "\n")
        if not normalized.strip():
            return ""
        segment = _latest_segment(normalized.split("\n"))
        reply = _tidy(_without_footer(_without_quotes(segment)))
        if reply:
            return reply
        segment = _tidy(segment)
        return segment if _has_words(segment) else _tidy(normalized)
    except Exception:  # noqa: BLE001 - a library bug must not lose the email text
        log.exception("reply extraction failed; keeping the whole text")
        return _tidy(str(text).replace("\r\n", "\n"))
