"""Lenient content-transfer decoding: what the stdlib gives up on.

``email.message.Message.get_payload(decode=True)`` returns uuencoded data
without a ``begin`` line, and base64 whose length is not a whole number of
quads, still encoded. Mail clients decode what is decodable; so does this
module, and it says what it had to overlook (the caller records a defect).
Pure and total: nothing here raises.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["UUENCODE_CTES", "decode_base64_lenient", "decode_uu_lenient", "split_uuencoded"]

UUENCODE_CTES = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})

_BEGIN = re.compile(rb"^begin(?:-base64)? +[0-7]{1,4}(?: |$)")
# A uuencoded file pasted into a plain-text body (Lotus Notes, old Outlook Express):
# "begin MODE NAME", lines of uuencoded data, an optional "`" line, "end".
_INLINE_UU = re.compile(
    r"^begin [0-7]{3,4} ([^\r\n]+)\r?\n((?:[\x21-\x60][\x20-\x60]*\r?\n)+?)(?:`\r?\n)?end[ \t]*$",
    re.MULTILINE)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def _uu_line(line: bytes) -> bytes | None:
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        pass
    # Trailing garbage (a mailer's padding or a signature): the length byte says
    # how much of the line is data, as the stdlib's own uudecode does.
    try:
        size = (((line[0] - 32) & 63) * 4 + 5) // 3
        return binascii.a2b_uu(line[:size])
    except (binascii.Error, IndexError):
        return None


def decode_uu_lenient(data: bytes) -> tuple[bytes, list[str]]:
    """Uudecode ``data``, with or without its ``begin`` and ``end`` lines.

    Returns the decoded bytes and what was overlooked (no ``begin`` line, lines
    that are not uuencoded): each a short sentence for the defects list.
    """
    notes: list[str] = []
    lines = data.splitlines()
    if not data.strip():
        return b"", notes   # an empty part: nothing was left out
    start = next((i + 1 for i, line in enumerate(lines) if _BEGIN.match(line)), None)
    if start is None:
        start = 0
        notes.append("uuencoded data without a begin line")
    out: list[bytes] = []
    skipped = 0
    for line in lines[start:]:
        if line.strip() == b"end":
            break
        if not line.strip() or line.rstrip() == b"`":
            continue
        decoded = _uu_line(line)
        if decoded is None:
            skipped += 1
        else:
            out.append(decoded)
    if skipped:
        notes.append(f"{skipped} line(s) of uuencoded data could not be decoded")
    return b"".join(out), notes


def decode_base64_lenient(data: bytes) -> tuple[bytes, list[str]]:
    """Base64-decode ``data`` whatever its padding and length.

    Characters outside the alphabet are ignored (as RFC 2045 says a decoder
    must); missing padding is supplied; a lone trailing character, which holds
    less than one byte, is dropped and said so.
    """
    notes: list[str] = []
    # Padding ends the data (RFC 2045 6.8): what follows a "=" is not decoded.
    head, padded, _ = data.partition(b"=")
    alphabet = _NOT_BASE64.sub(b"", head)
    extra = len(alphabet) % 4
    if extra == 1:
        notes.append("base64 of invalid length: its last character holds no whole byte")
        alphabet = alphabet[:-1]
    elif extra:
        if not padded:
            notes.append("base64 without its padding")
        alphabet += b"=" * (4 - extra)
    try:
        return binascii.a2b_base64(alphabet), notes
    except binascii.Error as exc:  # pragma: no cover - the input is clean by now
        return b"", [*notes, f"base64 not decodable: {exc}"]


def split_uuencoded(text: str) -> tuple[str, list[tuple[str, bytes]]]:
    """The uuencoded files in a plain-text body: the text without them, and each
    file's name and decoded bytes. A text without any is returned as it is."""
    if "begin " not in text:
        return text, []
    files: list[tuple[str, bytes]] = []

    def take(match: re.Match[str]) -> str:
        data, _ = decode_uu_lenient(match.group(2).encode("ascii", "replace"))
        files.append((match.group(1).strip(), data))
        return ""

    return _INLINE_UU.sub(take, text), files
