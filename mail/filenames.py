"""Make attachment filenames from email safe to store and to show.

Names in email are chosen by the sender. They can carry directory parts
(``../../etc/passwd``, ``C:\\Users\\x\\a.doc``), control characters, bidi
overrides that disguise an extension (``invoice\\u202efdp.exe``), leading dots
that hide a file, and lengths no filesystem accepts. RFC 2231 and RFC 2047
decoding is the caller's job (``ingest.parse`` does it); this module only
turns an already decoded name into one that is harmless.
"""

from __future__ import annotations

import re
import unicodedata

MAX_FILENAME_LENGTH = 150

# An extension longer than this is more likely part of the name
# ("report.final version of the quarterly numbers") than a real suffix.
_MAX_EXTENSION_LENGTH = 16

_WHITESPACE_RUN = re.compile(r"\s+")


# Zero-width (non-)joiners are format characters too, but Persian, Indic and
# emoji names need them.
_KEPT_FORMAT_CHARS = {"\u200c", "\u200d"}


def _replacement(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Cc":
        # C0/C1 controls (CR, LF, TAB, NUL, ESC...): a space keeps the word
        # break of a folded "a\r\n b.txt".
        return " "
    if category == "Cf" and char not in _KEPT_FORMAT_CHARS:
        # Format characters include the bidi overrides that make "fdp.exe"
        # display as "exe.pdf".
        return ""
    if category in {"Cs", "Co", "Cn"}:
        # Lone surrogates, private use and unassigned code points have no
        # business in a name shown to people or passed to a filesystem.
        return ""
    return char


def _basename(name: str) -> str:
    # Both separators count on every OS: a Windows client sends "C:\\x\\a.doc"
    # and a hostile one sends "..\\..\\a" hoping for a Windows consumer.
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def _limit_length(name: str) -> str:
    if len(name) <= MAX_FILENAME_LENGTH:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and stem and 0 < len(extension) <= _MAX_EXTENSION_LENGTH and " " not in extension:
        keep = MAX_FILENAME_LENGTH - len(extension) - 1
        return stem[:keep].rstrip(" .") + "." + extension
    return name[:MAX_FILENAME_LENGTH].rstrip(" .")


def _clean(name: str) -> str:
    name = unicodedata.normalize("NFC", name)
    # Characters are replaced before the path is cut, so no control or
    # format character can hide a separator from the basename step.
    name = "".join(_replacement(char) for char in name)
    name = _basename(name)
    name = _WHITESPACE_RUN.sub(" ", name)
    # Leading dots hide files and ".." is a path; trailing dots and spaces are
    # silently dropped by Windows, so two names could collide there.
    name = name.strip(" ").lstrip(".").strip(" ").rstrip(" .")
    return _limit_length(name)


def clean_filename(name: str | None, fallback: str) -> str:
    """Return a safe, non-empty file name for ``name``.

    Path components (``/`` and ``\\``), control and format characters and
    leading dots are removed, whitespace is collapsed and the result is at
    most 150 characters with its extension kept. When nothing usable is left,
    the cleaned ``fallback`` is returned, and ``"attachment"`` if even that is
    empty, so the result is never empty.
    """
    cleaned = _clean(name) if name else ""
    if cleaned:
        return cleaned
    cleaned_fallback = _clean(fallback) if fallback else ""
    return cleaned_fallback or "attachment"
