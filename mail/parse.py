"""Turn the raw bytes of an inbound email into a ``ParsedEmail``.

Pure: no database, no network, no clock. Never raises on odd input except
``UnparseableEmail``, and only when the bytes are not an email at all:

* the bytes are empty or only whitespace, or
* no header field could be read *and* the bytes look binary (a NUL byte, or
  more than 10 % control characters in the first 8 KiB) -- a PDF, an image,
  random junk; or
* the MIME structure is nested so deeply that the parser gives up (a
  deliberate denial-of-service shape, not a message anybody wrote).

Headerless *text* is still parsed (everything becomes the body, with a
defect): it may be a message whose headers were lost, and the later pipeline
steps (no sender...) decide what to do with it; nothing is thrown away here.

Division of labour: the bytes are parsed once, by the stdlib ``email`` package
(compat32); mail-parser is handed only the header fields of that parse and reads
the header side (addresses with its recovery rules, dates, defects); the MIME
tree is walked here, because mail-parser's own body/attachment split does not
fit a ticket: it appends the text of forwarded messages and of named inline
text files to the body, lists ``message/rfc822`` parts only when they are
marked as attachments, and names unnamed attachments with *random* strings,
which would make processing the same raw message twice give different
results (and it decodes and base64-encodes again every attachment).

Leniency, each case recorded in ``defects`` (nothing is made up): a damaged header block
is repaired before the parse (``header_repair``: junk lines before it, unindented
continuation lines, "Name :" fields); of several From: fields the first with a valid
address is the sender; undeclared 8-bit header bytes and file names are read in a charset
declared elsewhere in the email, else in the East Asian charset a detector finds for all
of them (``charsets``), else windows-1252; ISO-2022-JP keeps its NEC/IBM extension
characters; uuencode without ``begin`` and base64 of a bad length are decoded as far as
they go (``transfer``).

Memory: in a large message, long runs of base64 lines are left out of the
stdlib parse and decoded straight from the raw bytes (see "large messages"
below), so a 34 MB email with a 25 MiB attachment costs about the decoded
attachment on top of its bytes, not hundreds of MB.
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import functools
import logging
import mimetypes
import quopri
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

from postdesk.mail.charsets import (
    decode_iso2022jp,
    detect_cjk_charset,
    is_iso2022jp,
    is_multibyte,
    plausible_cjk,
)
from postdesk.mail.filenames import clean_filename
from postdesk.mail.header_repair import repair_header_block
from postdesk.mail.transfer import (
    UUENCODE_CTES,
    decode_base64_lenient,
    decode_uu_lenient,
    split_uuencoded,
)

# mail-parser logs ~75 DEBUG lines per message; keep only its warnings.
logging.getLogger("mailparser").setLevel(logging.WARNING)

__all__ = [
    "Headers",
    "ParsedAttachment",
    "ParsedEmail",
    "UnparseableEmail",
    "decode_header_text",
    "html_to_text",
    "message_ids",
    "normalize_message_id",
    "own_parts",
    "parse_email",
]


class UnparseableEmail(Exception):
    """The bytes are not an email at all; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Headers:
    """Raw header values, looked up case-insensitively.

    "Raw" means as sent: RFC 2047 encoded-words are *not* decoded. Folding is
    undone, 8-bit bytes are read as UTF-8 (replacement characters where that
    fails) and NULs are dropped, so every value is a plain one-line ``str``.
    """

    items: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None when absent."""
        wanted = name.lower()
        for key, value in self.items:
            if key.lower() == wanted:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        """Every value of header ``name`` in message order (maybe empty)."""
        wanted = name.lower()
        return [value for key, value in self.items if key.lower() == wanted]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.header(name) is not None


@dataclass(frozen=True)
class ParsedAttachment:
    """One attachment, decoded.

    ``content_id`` has no angle brackets, so it compares equal to what a
    ``cid:`` URL in the HTML body names (RFC 2392). ``is_rfc822`` marks a
    forwarded message (payload: its bytes); ``is_tnef`` a winmail.dat.
    ``size`` is the decoded size; ``too_large`` means it was over the limit
    given to ``parse_email`` and not decoded (``payload`` is then empty).
    """

    filename: str
    content_type: str
    payload: bytes
    content_id: str | None = None
    inline: bool = False
    is_rfc822: bool = False
    is_tnef: bool = False
    size: int = -1
    too_large: bool = False

    def __post_init__(self) -> None:
        if self.size < 0:
            object.__setattr__(self, "size", len(self.payload))


@dataclass(frozen=True)
class ParsedEmail:
    """Everything the pipeline needs from one inbound message.

    Addresses are lowercased. ``text`` is the sender's own plain-text body
    (derived from ``html`` when there is no text part); the bodies of
    forwarded messages are not in it but in ``attachments``. Every ``str``
    is free of NULs and lone surrogates, so it can be stored as is.
    """

    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    from_name: str | None
    from_addr: str | None
    reply_to: list[str]
    to: list[str]
    cc: list[str]
    subject: str
    date: datetime | None
    text: str
    html: str | None
    attachments: list[ParsedAttachment]
    headers: Headers
    defects: list[str]
    message: email.message.Message = field(repr=False, compare=False)

    def header(self, name: str) -> str | None:
        return self.headers.header(name)

    def header_all(self, name: str) -> list[str]:
        return self.headers.header_all(name)


# --- text hygiene ------------------------------------------------------------

_SURROGATES = re.compile(r"[\ud800-\udfff]")


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL, and no UTF-8 encoder accepts a lone
    # surrogate (the stdlib's surrogateescape leftovers): make both harmless.
    return _SURROGATES.sub("\ufffd", text.replace("\x00", ""))


_FOLD = re.compile(r"\r?\n(?=[ \t])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _one_line(text: str) -> str:
    text = _FOLD.sub("", text)
    text = _LINE_BREAK.sub("", text)
    text = _CONTROLS.sub("", text.replace("\t", " "))
    return _storable(text).strip()


def _raw_header_str(value: Any) -> str:
    """A raw header value as text: 8-bit bytes read as UTF-8, else U+FFFD."""
    text = str(value)
    if _SURROGATES.search(text):
        data = text.encode("utf-8", "surrogateescape")
        text = data.decode("utf-8", "replace")
    return text


# --- charsets ------------------------------------------------------------------

# Labels that senders use for a larger charset than they name: decoding with
# the superset is what mail clients do (and what WHATWG specifies for the web).
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "iso2022_jp": "iso2022_jp_ext",
    "big5": "big5hkscs",
    "iso8859-1": "cp1252",
    "tis-620": "cp874",
}


def _codec_name(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    # Only real text encodings: "base64", "rot13" and friends also resolve.
    try:
        "".encode(name)
        b"".decode(name)
    except (LookupError, UnicodeError, ValueError, TypeError):
        return None
    return name


def _try_decode(data: bytes, encoding: str, errors: str = "strict") -> str | None:
    try:
        return data.decode(encoding, errors)
    except (LookupError, UnicodeError, ValueError, TypeError):
        return None


def _mostly_utf8(data: bytes) -> str | None:
    # UTF-8 with a few broken bytes (a truncated or spliced text) reads far
    # better with replacement characters than as windows-1252 mojibake.
    text = data.decode("utf-8", "replace")
    broken = text.count("\ufffd")
    decoded = sum(1 for char in text if ord(char) > 0x7F) - broken
    return text if decoded > broken else None


def decode_bytes(data: bytes, declared: str | None, hints: Iterable[str | None] = ()) -> str:
    """Decode ``data`` that claims charset ``declared``; never raises.

    Order: the declared charset's usual superset, then the charset itself
    (ISO-2022-JP then as Japanese clients write it, extension characters
    included); when nothing usable was declared (or it was us-ascii): raw
    ISO-2022-JP escapes, UTF-8, UTF-8 with replacement characters if most of
    the text is valid UTF-8, then the ``hints`` (other charsets of the same
    message, a detected one last) -- double-byte ones first, and only when the
    text decodes to East Asian script in them, since they accept a lot of Latin
    bytes too -- and windows-1252. As a last resort the declared charset, or
    UTF-8, with replacement characters.
    """
    name = _codec_name(declared)
    if name and is_iso2022jp(name) and max(data, default=0) >= 0x80:
        # ISO-2022-JP is 7-bit: 8-bit bytes mean the label is wrong (UTF-8 or
        # EUC-JP under an old default label); read them as undeclared text.
        return decode_bytes(data, None, [*hints, detect_cjk_charset(data)])
    if name and name != "ascii":
        # Superset first: it decodes everything the named charset does, and
        # for latin-1 the C1 range is really windows-1252 punctuation.
        for candidate in dict.fromkeys([_SUPERSETS.get(name, name), name]):
            text = _try_decode(data, candidate)
            if text is not None:
                return text
        if is_iso2022jp(name):
            return decode_iso2022jp(data)
    else:
        if b"\x1b$" in data and max(data, default=0) < 0x80:
            # ISO-2022-JP written raw into a header (old Japanese mailers).
            return _try_decode(data, "iso2022_jp") or decode_iso2022jp(data)
        text = _try_decode(data, "utf-8")
        if text is not None:
            return text
        text = _mostly_utf8(data)
        if text is not None:
            return text
        names = [hint for hint in (_codec_name(h) for h in hints) if hint]
        for candidate in dict.fromkeys(h for h in names if is_multibyte(h)):
            candidate = _SUPERSETS.get(candidate, candidate)
            text = _try_decode(data, candidate)
            if text is not None and (candidate.startswith("utf") or plausible_cjk(text)):
                return text
        for candidate in dict.fromkeys([*(h for h in names if not is_multibyte(h)), "cp1252"]):
            text = _try_decode(data, _SUPERSETS.get(candidate, candidate))
            if text is not None:
                return text
    fallback = _SUPERSETS.get(name, name) if name and name != "ascii" else "utf-8"
    return _try_decode(data, fallback, "replace") or data.decode("utf-8", "replace")


def _message_charsets(message: email.message.Message) -> list[str]:
    charsets: list[str] = []
    try:
        for part in message.walk():
            charset = part.get_content_charset()
            if charset and charset not in charsets:
                charsets.append(charset)
            if len(charsets) >= 3:
                break
    except Exception:  # noqa: BLE001 - a hint only; malformed trees are common
        pass
    return charsets


_SAMPLE_BYTES = 64 << 10


def _undeclared_charset(message: email.message.Message) -> str | None:
    """The East Asian charset of the raw 8-bit header bytes of the message (the
    top header block and each part's Content-Type/Disposition, where file names
    are) when they are not UTF-8 and a detector is sure; else None. All such
    bytes are judged together: a subject alone is too short to tell."""
    pieces: list[bytes] = []
    size = 0
    for part in own_parts(message):
        items = message.raw_items() if part is message else (
            (k, v) for k, v in part.raw_items() if k.lower().startswith("content-"))
        for _, value in items:
            text = str(value)
            if _SURROGATES.search(text):
                data = text.encode("utf-8", "surrogateescape")
                if _try_decode(data, "utf-8") is None:
                    pieces.append(data)
                    size += len(data)
        if size > _SAMPLE_BYTES:
            break
    return detect_cjk_charset(b" ".join(pieces)[:_SAMPLE_BYTES]) if pieces else None


def decode_header_text(value: Any, hints: Iterable[str | None] = ()) -> str:
    """Decode a header value (RFC 2047 encoded-words and raw 8-bit bytes).

    Never raises. Broken encoded-words are decoded as far as possible by the
    stdlib's lenient header parser; undecodable bytes become U+FFFD. Line
    folding is undone but the result may still hold other whitespace.
    """
    hints = list(hints)
    text = str(value)
    # Back to the wire octets (the parser keeps 8-bit bytes as surrogate
    # escapes), then to a latin-1 string: decode_header() hands unencoded
    # runs back as raw-unicode-escape bytes, which for code points below 256
    # are exactly the original octets, so 8-bit text survives the round trip.
    octets = text.encode("utf-8", "surrogateescape")
    if max(octets, default=0) < 0x80 or _SURROGATES.search(text):
        wire = octets.decode("latin-1")
    else:
        wire = None  # Already real Unicode (parsed from str): keep it.
    source = _FOLD.sub("", wire if wire is not None else text)
    try:
        chunks = email.header.decode_header(source)
    except (email.errors.HeaderParseError, ValueError, LookupError, UnicodeError):
        return _lenient_header(source, hints)
    pieces = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            data = chunk.encode("latin-1", "replace") if wire is not None else None
            pieces.append(decode_bytes(data, None, hints) if data is not None else chunk)
        else:
            pieces.append(decode_bytes(chunk, charset, hints))
    return _storable("".join(pieces))


def _lenient_header(source: str, hints: list[str | None]) -> str:
    # decode_header() gives up on the whole value for one bad base64 word;
    # the policy.default header parser decodes word by word and records
    # defects instead, leaving undecodable octets as surrogate escapes.
    try:
        header = email.policy.default.header_factory("x-decode", source)
        text = str(header)
    except Exception:  # noqa: BLE001 - last resort, keep the raw text
        text = source
    if _SURROGATES.search(text) or any(ord(c) > 0x7F for c in text):
        try:
            data = text.encode("latin-1", "surrogateescape")
        except UnicodeEncodeError:
            return _storable(text)
        return _storable(decode_bytes(data, None, hints))
    return _storable(text)


# --- Message-IDs -----------------------------------------------------------

_MSG_ID = re.compile(r"<([^<>]*)>")
_WHITESPACE = re.compile(r"\s+")


def message_ids(value: str | None) -> list[str]:
    """All ``<...>`` ids in a References/In-Reply-To value, junk ignored.

    Whitespace inside the brackets (from folding) is removed; empty ids and
    duplicates are dropped; order is kept.
    """
    if not value:
        return []
    found: dict[str, None] = {}
    for inner in _MSG_ID.findall(value):
        inner = _WHITESPACE.sub("", inner)
        if inner:
            found[f"<{inner}>"] = None
    return list(found)


def normalize_message_id(value: str | None) -> str | None:
    """``<id>`` from a Message-ID value, or None when missing or blank.

    A bare ``id@host`` (no brackets, some broken mailers) is bracketed.
    """
    ids = message_ids(value)
    if ids:
        return ids[0]
    bare = (value or "").strip().strip("<>").strip()
    if bare and not _WHITESPACE.search(bare):
        return f"<{bare}>"
    return None


# --- HTML to text ------------------------------------------------------------


class _TextExtractor(HTMLParser):
    """Fallback HTML-to-text: block elements end lines, scripts are dropped."""

    _BLOCKS = frozenset(
        {
            "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
            "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
            "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
        }
    )
    _SKIPPED = frozenset({"script", "style", "head", "title", "template", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIPPED:
            self.skip_depth += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")
        elif tag in {"td", "th"}:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            # Source line breaks are layout in HTML, not text.
            self.parts.append(_WHITESPACE.sub(" ", data))


def _fallback_html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
    except Exception:  # noqa: BLE001 - html.parser on hostile input; keep what we have
        pass
    return "".join(extractor.parts)


@functools.cache
def _inscriptis() -> tuple[Callable[[str, Any], str], Any] | None:
    """inscriptis' ``get_text`` and its configuration; None when it is not installed.

    Optional: a layout-aware HTML-to-text converter (Apache-2.0). Imported on first use:
    only HTML bodies need it, and inscriptis with lxml costs ~0.02 s CPU at every start
    otherwise."""
    try:
        import inscriptis
        from inscriptis.css_profiles import CSS_PROFILES
        from inscriptis.model.config import ParserConfig
    except ImportError:  # pragma: no cover - exercised by forcing the fallback
        return None
    # The "strict" CSS profile: inline elements (span, b, a, font...) add no
    # whitespace of their own. The default "relaxed" one puts a space at every
    # inline boundary, which splits words styled in pieces ("Ex<b>ample</b>") and
    # every run of Chinese or Japanese text that a mail client wrapped in spans.
    config = ParserConfig(css=CSS_PROFILES["strict"], display_links=False,
                          display_images=False)
    return inscriptis.get_text, config


_BLANK_LINES = re.compile(r"\n{3,}")
# libxml2 drops whatever follows </html> (mailing-list footers, the second half
# of a message glued by a gateway); without the end tags it stays in the body.
_DOCUMENT_END_TAGS = re.compile(r"</\s*(?:html|body)\s*>", re.IGNORECASE)


def html_to_text(html: str, *, use_library: bool = True) -> str:
    """Readable plain text from an HTML body.

    Uses inscriptis (layout-aware: tables, lists, paragraphs) when it is
    installed, else a small ``html.parser`` based converter, which is also
    the fallback if inscriptis (lxml) fails on hostile markup.
    """
    text = None
    library = _inscriptis() if use_library else None
    if library is not None:
        get_text, config = library
        try:
            text = get_text(_DOCUMENT_END_TAGS.sub("", html), config)
        except Exception:  # noqa: BLE001 - lxml on hostile markup; use the fallback
            text = None
    if text is None:
        text = _fallback_html_to_text(html)
    lines = (line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    return _storable(_BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n"))


# --- MIME walk -------------------------------------------------------------

_TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}
_FORWARD_TYPES = {"message/rfc822", "message/global"}
_BODY_TYPES = {"text/plain", "text/html"}
# Only the built-in table: mimetypes.guess_extension() would read the host's
# /etc/mime.types, and the same message must give the same names everywhere.
_MIME_TYPES = mimetypes.MimeTypes(filenames=())


def _extension_for(content_type: str) -> str:
    if content_type in _FORWARD_TYPES:
        return ".eml"
    return _MIME_TYPES.guess_extension(content_type, strict=False) or ".bin"


def _part_filename(part: email.message.Message, hints: list[str | None]) -> str | None:
    # Where get_filename() looks, but decoded here: for a header with raw 8-bit
    # bytes the stdlib hands back U+FFFD instead of them, and it applies an RFC
    # 2231 charset strictly or with U+FFFD, which loses undeclared bytes and
    # the ISO-2022-JP extension characters.
    for param, header in (("filename", "content-disposition"), ("name", "content-type")):
        raw_value = _first_raw_header(part, header)
        if raw_value is None:
            continue
        # The header again with its octets as code points below 256 (no
        # surrogates, so the stdlib does not replace them), to read the
        # parameter from.
        wire = email.message.Message()
        wire[header] = raw_value.encode("utf-8", "surrogateescape").decode("latin-1")
        try:
            # get_param() joins RFC 2231 continuations and unquotes.
            value = wire.get_param(param, None, header)
        except Exception:  # noqa: BLE001 - malformed parameters; treat as unnamed
            return None
        if value is None:
            continue
        if isinstance(value, tuple):   # RFC 2231: (charset, language, text)
            charset, _, text = value
            octets = str(text).encode("latin-1", "replace")
            decoded = decode_bytes(octets, str(charset) if charset else None, hints)
            return _storable(decoded).strip() or None  # clean_filename handles controls
        octets = str(value).strip().encode("latin-1", "replace")
        if max(octets, default=0) >= 0x80:
            return _storable(decode_bytes(octets, None, hints)).strip() or None
        # Many clients (Outlook, Gmail) put RFC 2047 encoded-words in filenames.
        return decode_header_text(octets.decode("ascii"), hints) or None
    return None


def _content_id(part: email.message.Message) -> str | None:
    value = part.get("content-id")
    if value is None:
        return None
    cid = _one_line(_raw_header_str(value)).strip().strip("<>").strip()
    return cid or None


def _disposition(part: email.message.Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:  # noqa: BLE001 - an 8-bit or broken header
        return None


def _flatten(message: email.message.Message, defects: list[str]) -> bytes:
    # The stdlib keeps no offsets into the original bytes, so a forwarded
    # message is re-serialised; BytesGenerator writes 8-bit octets back as is.
    try:
        return message.as_bytes()
    except Exception:  # noqa: BLE001 - odd charsets make the generator raise
        pass
    from mailparser.utils import as_string_safe  # see _mailparser

    try:
        text: str = as_string_safe(message)
        return text.encode("utf-8", "surrogateescape")
    except Exception as exc:  # noqa: BLE001 - keep the email, note the loss
        defects.append(f"could not serialise an attached message: {type(exc).__name__}")
        return b""


def _decode_transfer(data: bytes, cte: str) -> bytes:
    # message/* must be 7bit/8bit/binary (RFC 2046 5.2.1), but some clients
    # base64- or QP-encode forwarded messages anyway.
    if cte == "base64":
        try:
            return binascii.a2b_base64(data)
        except (binascii.Error, ValueError):
            return data
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    return data


def _payload_bytes(part: email.message.Message, defects: list[str]) -> bytes:
    if part.is_multipart():
        payload = part.get_payload()
        if not isinstance(payload, list):
            return b""
        flat = b"\n".join(_flatten(sub, defects) for sub in payload
                          if isinstance(sub, email.message.Message))
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        return _decode_transfer(flat, cte)
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte in UUENCODE_CTES:
        decoded, notes = decode_uu_lenient(_encoded_payload(part))
        defects += [f"{part.get_content_type()}: {note}" for note in notes]
        return decoded
    data: Any
    try:
        data = part.get_payload(decode=True)
    except Exception as exc:  # noqa: BLE001 - broken transfer encoding
        defects.append(f"{part.get_content_type()}: payload not decodable: {exc}")
        data = None
    if cte == "base64" and any(
            isinstance(d, email.errors.InvalidBase64LengthDefect) for d in part.defects):
        # The stdlib handed back the base64 text itself: decode what is decodable.
        data, notes = decode_base64_lenient(_encoded_payload(part))
        defects += [f"{part.get_content_type()}: {note}" for note in notes]
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _encoded_payload(part: email.message.Message) -> bytes:
    payload = part.get_payload()
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _body_text(part: email.message.Message, hints: list[str | None]) -> str:
    data = _payload_bytes(part, [])
    try:
        charset = part.get_content_charset()
    except Exception:  # noqa: BLE001 - malformed parameter
        charset = None
    return _storable(decode_bytes(data, charset, hints))


@dataclass
class _Walk:
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[ParsedAttachment] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)


def _is_container(part: email.message.Message) -> bool:
    return part.get_content_maintype() == "multipart" and part.is_multipart()


def own_parts(message: email.message.Message) -> Iterator[email.message.Message]:
    """Every part of the message itself, in document order, containers too.

    Attached messages (message/*) are yielded but not entered: what a
    forwarded message contains is not part of the message that forwards it.
    An explicit stack, because hostile nesting must not exhaust recursion.
    """
    stack = [message]
    while stack:
        part = stack.pop()
        yield part
        if _is_container(part):
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(reversed(
                    [child for child in children if isinstance(child, email.message.Message)]))


def _leaf_parts(message: email.message.Message) -> Iterator[email.message.Message]:
    return (part for part in own_parts(message) if not _is_container(part))


def _walk(message: email.message.Message, hints: list[str | None],
          max_attachment_bytes: int | None = None) -> _Walk:
    result = _Walk()
    forwarded = 0
    for part in _leaf_parts(message):
        content_type = part.get_content_type()
        disposition = _disposition(part)
        filename = _part_filename(part, hints)
        is_root = part is message
        # A multipart whose boundary is missing arrives as one text blob.
        textual = content_type in _BODY_TYPES or part.get_content_maintype() == "multipart"
        # Named or attachment-disposition text is a file the sender attached;
        # the lone part of a single-part message is the body whatever it is
        # called.
        if textual and (is_root or (disposition != "attachment" and not filename)):
            if content_type == "text/html":
                result.html.append(_body_text(part, hints))
                continue
            text, files = split_uuencoded(_body_text(part, hints))
            result.plain.append(text)
            for name, data in files:   # files pasted into the text, uuencoded
                guessed = _MIME_TYPES.guess_type(name, strict=False)[0]
                result.attachments.append(ParsedAttachment(
                    filename=_storable(clean_filename(name, "attachment.bin")),
                    content_type=guessed or "application/octet-stream", payload=data))
            continue
        is_forward = content_type in _FORWARD_TYPES
        if is_forward:
            forwarded += 1
            default_name = "forwarded.eml" if forwarded == 1 else f"forwarded-{forwarded}.eml"
        else:
            index = len(result.attachments) + 1
            default_name = f"attachment-{index}{_extension_for(content_type)}"
        name = clean_filename(filename, default_name)
        content_id = _content_id(part)
        known = _known_size(part) if max_attachment_bytes is not None else None
        too_large = known is not None and known > (max_attachment_bytes or 0)
        payload = b"" if too_large else _payload_bytes(part, result.defects)
        result.attachments.append(
            ParsedAttachment(
                filename=_storable(name),
                content_type=content_type,
                payload=payload,
                size=known if too_large and known is not None else len(payload),
                too_large=too_large,
                content_id=content_id,
                inline=disposition == "inline" or (disposition is None and content_id is not None),
                is_rfc822=is_forward,
                is_tnef=content_type in _TNEF_TYPES or name.lower() == "winmail.dat",
            )
        )
    return result


# --- large messages: base64 left out of the parse ----------------------------
#
# The stdlib parser holds a message several times over while it works (the text, its
# lines, the joined payload), and decoding a base64 payload copies it twice more: an
# email with a 25 MiB attachment cost hundreds of MB. So in a large message every long
# run of base64 lines is replaced, before parsing, by one line holding a token, and the
# part that receives the token decodes its payload straight from the raw bytes when asked.
# The token line is, like the lines it stands for, a run of base64 characters: every
# rule of the parser (header line, boundary, end of line) treats it as it treats them,
# so the MIME tree is the same. Anything that asks a part for its text gets the exact
# text back; only the decoding of a well-formed run takes the short path.

_HOLLOW_MESSAGE_BYTES = 1 << 20   # smaller messages are parsed as they are
_HOLLOW_RUN_BYTES = 64 << 10      # shorter runs stay in the parse
_B64_RUN = re.compile(rb"(?:^[A-Za-z0-9+/]++={0,2}\r?\n)++", re.MULTILINE)
_BASE64_LINE_BREAKS = re.compile(rb"\r?\n")


@dataclass(frozen=True)
class _Run:
    token: str
    text: memoryview        # the run's bytes in the raw message, without its last line end
    chars: int              # base64 characters in it, "=" included (a multiple of 4)
    padding: int            # "=" at its end (only there)


def _parse_mime(raw: bytes) -> email.message.Message:
    """The stdlib (compat32) parse of ``raw``; large base64 runs are left out of it."""
    if len(raw) >= _HOLLOW_MESSAGE_BYTES:
        hollowed = _hollow(raw, _HOLLOW_RUN_BYTES)
        if hollowed is not None:
            fed, prefix, runs = hollowed
            message = email.message_from_bytes(fed)
            del fed
            if _fill(message, prefix, runs):
                return message
    return email.message_from_bytes(raw)


def _hollow(raw: bytes, min_run: int) -> tuple[bytes, str, dict[str, _Run]] | None:
    prefix = "PostdeskHollow" + secrets.token_hex(8)
    if prefix.encode() in raw:
        return None
    view = memoryview(raw)
    pieces: list[bytes | memoryview] = []
    runs: dict[str, _Run] = {}
    position = 0
    for match in _B64_RUN.finditer(raw):
        start, end = match.span()
        pad_at = raw.find(b"=", start, end)
        if pad_at != -1:
            end = raw.index(b"\n", pad_at) + 1   # padding ends the data: the run too
        if end - start < min_run:
            continue
        # The last line end stays in the parse: the parser drops the line end before a
        # boundary, and it must find the same one there.
        end -= 2 if raw[end - 2:end] == b"\r\n" else 1
        breaks = raw.count(b"\n", start, end) + raw.count(b"\r", start, end)
        chars = end - start - breaks
        if chars % 4:
            continue   # not a whole number of base64 quads: leave it to the parser
        padding = end - pad_at if pad_at != -1 else 0
        token = f"{prefix}n{len(runs)}x"   # "x": no token is the start of another
        runs[token] = _Run(token, view[start:end], chars, padding)
        pieces += [view[position:start], token.encode()]
        position = end
    if not runs:
        return None
    pieces.append(view[position:])
    return b"".join(pieces), prefix, runs


def _fill(message: email.message.Message, prefix: str, runs: dict[str, _Run]) -> bool:
    """Give every token back: a part whose payload holds one becomes a ``_HollowPart``;
    a token in a preamble or epilogue is replaced by its text. False if a token is not
    found exactly once (then the caller parses the whole message instead)."""
    found: dict[str, int] = {}
    stack = [message]
    while stack:
        part = stack.pop()
        for attr in ("preamble", "epilogue"):
            value = getattr(part, attr, None)
            if isinstance(value, str) and prefix in value:
                tokens = [t for t in runs if t in value]
                for token in tokens:
                    found[token] = found.get(token, 0) + 1
                setattr(part, attr, _restore(value, [runs[t] for t in tokens]))
        payload = part.__dict__.get("_payload")
        if isinstance(payload, list):
            stack.extend(p for p in payload if isinstance(p, email.message.Message))
        elif isinstance(payload, str) and prefix in payload:
            tokens = [t for t in runs if t in payload]
            for token in tokens:
                found[token] = found.get(token, 0) + 1
            part.__class__ = _HollowPart
            part.__dict__["_hollow"] = [runs[t] for t in tokens]
    return found == dict.fromkeys(runs, 1)


def _restore(template: str, runs: list[_Run]) -> str:
    for run in runs:
        template = template.replace(run.token, bytes(run.text).decode("ascii"), 1)
    return template


class _HollowPart(email.message.Message):
    """A leaf part whose payload text holds tokens for base64 runs of the raw message.

    Its ``_payload`` is the real text, built on first access (the part then turns back
    into a plain ``Message``), so the generator, ``get_payload()`` and every other reader
    see exactly what the parser would have given. ``get_payload(decode=True)`` of a
    base64 part decodes the runs in place instead, without building the text."""

    _hollow: list[_Run]

    @property
    def _payload(self) -> str:
        template = self.__dict__["_payload"]
        text = _restore(template, self.__dict__.pop("_hollow"))
        self.__dict__["_payload"] = text
        self.__class__ = email.message.Message   # type: ignore[assignment]
        return text

    @_payload.setter
    def _payload(self, value: Any) -> None:
        self.__dict__.pop("_hollow", None)
        self.__dict__["_payload"] = value
        self.__class__ = email.message.Message   # type: ignore[assignment]

    def is_multipart(self) -> bool:
        return False

    def get_payload(self, i: Any = None, decode: bool = False) -> Any:
        if decode and i is None:
            decoded = self._decode_runs(size_only=False)
            if isinstance(decoded, bytes):
                return decoded
        if decode:
            return super().get_payload(i, decode=True)
        return super().get_payload(i)

    def decoded_size(self) -> int | None:
        """The size ``get_payload(decode=True)`` returns, without decoding the runs;
        None when that needs the text."""
        size = self._decode_runs(size_only=True)
        return size if isinstance(size, int) else None

    def _decode_runs(self, *, size_only: bool) -> bytes | int | None:
        # The same result as Message.get_payload(decode=True) of the text: that joins
        # the lines and base64-decodes them (email._encoded_words.decode_b). A run is
        # whole quads of valid characters, padded at most at its end. When nothing but
        # line ends comes before it, the result is: a padded run decoded, if nothing but
        # line ends follows; an unpadded run decoded, followed by the rest decoded (the
        # quads of the run do not change how the rest decodes, strictly or not).
        if str(self.get("content-transfer-encoding", "")).lower() != "base64":
            return None
        runs: list[_Run] | None = self.__dict__.get("_hollow")
        template = self.__dict__.get("_payload")
        if not runs or len(runs) != 1 or not isinstance(template, str):
            return None
        run = runs[0]
        head, _, tail = template.partition(run.token)
        if head.strip("\r\n"):
            return None
        if not tail.strip("\r\n"):
            decoded_size = run.chars // 4 * 3 - run.padding
            return decoded_size if size_only else binascii.a2b_base64(run.text)
        if run.padding:
            return None   # data after the padding: the stdlib's lenient path decides
        rest = email.message.Message()
        rest["Content-Transfer-Encoding"] = "base64"
        rest.set_payload(tail)
        got = rest.get_payload(decode=True)
        if not isinstance(got, bytes):
            return None
        value: bytes = got
        for defect in rest.defects:
            self.policy.handle_defect(self, defect)
        if any(isinstance(d, email.errors.InvalidBase64LengthDefect) for d in rest.defects):
            # Undecodable: the stdlib hands back the joined base64 text itself.
            if size_only:
                return run.chars + len(value)
            joined: bytes = _BASE64_LINE_BREAKS.sub(b"", run.text)
            return joined + value
        if size_only:
            return run.chars // 4 * 3 + len(value)
        decoded: bytes = binascii.a2b_base64(run.text)
        return decoded + value


def _known_size(part: email.message.Message) -> int | None:
    """The decoded size of a leaf part's payload when its encoded form tells it without
    decoding (base64); None otherwise."""
    if isinstance(part, _HollowPart):
        return part.decoded_size()
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte != "base64" or part.is_multipart():
        return None
    payload = part.get_payload()   # the encoded text, not decoded: no copy of the data
    if not isinstance(payload, str):
        return None
    characters = len(payload) - sum(payload.count(c) for c in " \t\r\n")
    padding = 0
    for char in reversed(payload):   # the "=" at the end, past any trailing white space
        if char == "=":
            padding += 1
        elif char not in " \t\r\n":
            break
    return max(0, characters * 3 // 4 - min(padding, 2))


# --- the parse ---------------------------------------------------------------

_BINARY_SAMPLE = 8192
_ALLOWED_CONTROLS = frozenset(b"\t\n\r\f\x1b")  # ESC: ISO-2022-JP text


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:_BINARY_SAMPLE]
    if b"\x00" in sample:
        return True
    controls = sum(1 for byte in sample if byte < 0x20 and byte not in _ALLOWED_CONTROLS)
    return controls * 10 > len(sample)


def _mail_parser_defects(parsed: Any) -> list[str]:
    out: list[str] = []
    for entry in getattr(parsed, "defects", None) or []:
        if isinstance(entry, dict):
            for where, items in entry.items():
                for item in items if isinstance(items, list) else [items]:
                    out.append(_storable(f"{where}: {item}"))
        else:
            out.append(_storable(str(entry)))
    return out


def _stdlib_defects(message: email.message.Message) -> list[str]:
    out = []
    for part in own_parts(message):
        for defect in part.defects:
            out.append(f"{part.get_content_type()}: {type(defect).__name__}")
    return out


def _headers_only(message: email.message.Message) -> email.message.Message:
    copy = email.message.Message()
    for name, value in message.raw_items():
        if not name.lower().startswith("content-"):
            copy[name] = value
    return copy


def _addresses(pairs: Any) -> list[str]:
    out: list[str] = []
    for pair in pairs or []:
        try:
            address = _one_line(str(pair[1])).strip("<>").lower()
        except (IndexError, TypeError):
            continue
        if address and address not in out:
            out.append(address)
    return out


def _as_utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        # mail-parser returns aware UTC; a naive value can only mean UTC.
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _display_name(parsed_name: str, raw_from: str | None, hints: list[str | None]) -> str:
    """The sender's display name, decoded.

    mail-parser's name is used as is unless it is visibly undecoded: it keeps
    encoded-words inside quotes literal (RFC 2047 says so; every mail client
    decodes them anyway) and escapes raw 8-bit bytes. Then the name is taken
    from the raw header again and decoded like the subject.
    """
    needs_redo = "=?" in parsed_name or (raw_from is not None and _SURROGATES.search(raw_from))
    if not needs_redo or raw_from is None:
        return _one_line(parsed_name)
    wire = raw_from.encode("utf-8", "surrogateescape").decode("latin-1")
    pairs = _name_address_pairs(_FOLD.sub("", wire))
    name = pairs[0][0] if pairs else ""
    if not name:
        return _one_line(parsed_name)
    surrogate_form = name.encode("latin-1", "replace").decode("ascii", "surrogateescape")
    return _one_line(decode_header_text(surrogate_form, hints))


_ATOM = r"[^@\s<>()\[\],;:\"]"
# local@domain.tld or local@[address literal]: what a reply could be sent to.
_VALID_ADDRESS = re.compile(rf"{_ATOM}+@(?:{_ATOM}+\.[^@\s<>()\[\],;:\".]+|\[[^\]\s]+\])")


_NAME_ANGLE_ADDRESS = re.compile(r'\s*"?(?P<name>[^<>"]*?)"?\s*<(?P<address>[^<>\s]+)>\s*')


def _name_address_pairs(wire: str) -> list[tuple[str, str]]:
    # A raw 8-bit name is read as octets, and double-byte text has octets that
    # are address syntax ("ツール" in Shift_JIS holds a "["): the one common
    # shape, a name and an <address>, is split at the angle bracket first.
    match = _NAME_ANGLE_ADDRESS.fullmatch(wire)
    if match and any(ord(char) > 0x7F for char in match["name"]):
        return [(match["name"].strip(), match["address"])]
    return email.utils.getaddresses([wire])


def _first_valid_sender(raw_froms: list[str], hints: list[str | None]
                        ) -> tuple[int, str, str] | None:
    """(index, display name, address) of the first From: field that holds a
    valid address, for a message with several (a damaged or forged header block:
    the others are a defect, and no address is made up from them)."""
    for index, raw_from in enumerate(raw_froms):
        wire = _FOLD.sub("", raw_from.encode("utf-8", "surrogateescape").decode("latin-1"))
        for name, address in _name_address_pairs(wire):
            address = _one_line(address).strip("<>").lower()
            if _VALID_ADDRESS.fullmatch(address):
                surrogate_form = name.encode("latin-1", "replace").decode(
                    "ascii", "surrogateescape")
                return index, _one_line(decode_header_text(surrogate_form, hints)), address
    return None


def _first_raw_header(message: email.message.Message, name: str) -> str | None:
    for key, value in message.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _mailparser() -> Any:
    """The mail-parser package, imported on first use: a command that parses no email
    (``tickets list``, ``status``, an empty import) does not pay its ~0.05 s CPU."""
    import mailparser

    return mailparser


def parse_email(raw: bytes, *, max_attachment_bytes: int | None = None) -> ParsedEmail:
    """Parse one raw message; see the module docstring for what may raise.

    With ``max_attachment_bytes``, an attachment whose decoded size is known from its
    encoded form to be larger is not decoded: it comes with an empty ``payload``, its
    ``size`` and ``too_large`` set.
    """
    raw = bytes(raw)
    if not raw or raw.isspace():   # (strip() would copy a large message)
        raise UnparseableEmail("empty message")

    raw, defects = repair_header_block(raw)
    try:
        message = _parse_mime(raw)
    except RecursionError as exc:
        raise UnparseableEmail("MIME structure nested too deeply") from exc
    header_source: Any
    try:
        # mail-parser reads the header side only: its own MIME walk would decode (and
        # base64-encode again) every attachment, which this module does itself.
        header_source = _mailparser().MailParser(_headers_only(message))
    except Exception as exc:  # noqa: BLE001 - a mail-parser bug must not lose the email
        defects.append(f"mail-parser failed on the headers ({type(exc).__name__}: {exc})")
        header_source = None
    else:
        defects += _mail_parser_defects(header_source)
    defects += _stdlib_defects(message)

    if len(message.keys()) == 0:
        if _looks_binary(raw):
            raise UnparseableEmail("no header fields and binary content")
        defects.append("no header fields")

    header_items = tuple(
        (name, _one_line(_raw_header_str(value))) for name, value in message.raw_items()
    )
    headers = Headers(header_items)
    hints: list[str | None] = [*_message_charsets(message), _undeclared_charset(message)]

    subject_raw = _first_raw_header(message, "subject")
    subject = _one_line(decode_header_text(subject_raw, hints)) if subject_raw is not None else ""

    from_pairs = (getattr(header_source, "from_", None) or []) if header_source else []
    from_name = _display_name(
        str(from_pairs[0][0]) if from_pairs else "", _first_raw_header(message, "from"), hints
    )
    from_addresses = _addresses(from_pairs)
    raw_froms = [str(value) for key, value in message.raw_items() if key.lower() == "from"]
    if len(raw_froms) > 1 or (raw_froms and not from_addresses):
        # Several From: fields (the others are a defect), or one that mail-parser
        # could not read (raw 8-bit bytes in the name): the first valid address.
        chosen = _first_valid_sender(raw_froms, hints)
        if len(raw_froms) > 1:
            defects.append(f"{len(raw_froms)} From: header fields" + (
                f"; the sender is taken from number {chosen[0] + 1}" if chosen else ""))
        if chosen is not None:
            _, from_name, address = chosen
            from_addresses = [address]

    walk = _walk(message, hints, max_attachment_bytes)
    defects += walk.defects
    html = "\n".join(walk.html) if walk.html else None
    text = "\n".join(walk.plain)
    if not text.strip() and html:
        text = html_to_text(html)

    return ParsedEmail(
        message_id=normalize_message_id(headers.header("message-id")),
        in_reply_to=next(iter(message_ids(headers.header("in-reply-to"))), None),
        references=message_ids(" ".join(headers.header_all("references"))),
        from_name=from_name or None,
        from_addr=from_addresses[0] if from_addresses else None,
        reply_to=_addresses(getattr(header_source, "reply_to", None)),
        to=_addresses(getattr(header_source, "to", None)),
        cc=_addresses(getattr(header_source, "cc", None)),
        subject=subject,
        date=_as_utc(getattr(header_source, "date", None)),
        text=text,
        html=html,
        attachments=walk.attachments,
        headers=headers,
        defects=[_storable(d) for d in defects],   # they quote the damaged input
        message=message,
    )


def parse_header_block(text: str) -> email.message.Message:
    """Parse a bare header block (e.g. text/rfc822-headers) into a Message."""
    return email.parser.HeaderParser().parsestr(text)
