"""Lenient recovery of a damaged header block, before the strict parse.

The stdlib parser ends the header block at the first line that is not a header
field, and takes a message whose first line is not one as having no headers.
Real mail breaks both rules: an mbox or archive writes a line of its own in
front ("From alice@example.com Mon ..." after other junk, a BOM, a log line),
and some mailers fold a long header without indenting the continuation. Then
From and Subject are lost and the remaining headers land in the body.

``repair_header_block`` looks only at the header block (up to the first blank
line) and changes only two things, each recorded as a defect:

* leading lines that are not header fields are dropped, when what follows them
  is a real header block (it names From, Subject, Date...);
* a line that cannot be a header field, inside the block and followed by more
  header fields, is joined to the field above (it gets the indentation of a
  folded line: the whitespace that folding means, nothing else).

Nothing is invented: no field is added, no text is changed. Messages that need
no repair are returned as the same bytes object (no copy: large mail stays
cheap).
"""

from __future__ import annotations

import re

__all__ = ["repair_header_block"]

# The stdlib's own test of a header line (email.feedparser.headerRE): a field
# name and a colon, a continuation, or an mbox "From " line.
_HEADER_LIKE = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")
# A field that surely starts a header: a name postdesk recognises, or any name
# with a colon and no spaces, written as real mailers write them.
_FIELD = re.compile(rb"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:")
_KNOWN_FIELDS = frozenset(
    name.encode() for name in (
        "from", "to", "cc", "bcc", "subject", "date", "message-id", "reply-to", "sender",
        "in-reply-to", "references", "received", "return-path", "mime-version",
        "content-type", "content-transfer-encoding", "delivered-to", "user-agent",
        "x-mailer", "importance", "thread-topic", "thread-index", "dkim-signature",
        "authentication-results", "list-id", "precedence", "auto-submitted",
    )
)
_OBSOLETE_COLON = re.compile(rb"^([A-Za-z][A-Za-z0-9-]*)[ \t]+:")
_LEADING_BLANK_LINES = re.compile(rb"(?:[ \t]*\r?\n){1,20}")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
# How far to look for the header block: a header block longer than this is
# left to the stdlib as it is.
_MAX_BLOCK_BYTES = 1 << 20
_MAX_SKIPPED_LINES = 20


def _is_blank(line: bytes) -> bool:
    return not line.strip(b"\r\n")


def _is_known_field(line: bytes) -> bool:
    match = _FIELD.match(line)
    if match is None:
        return False
    name = match.group(1).lower()
    return name in _KNOWN_FIELDS or name.startswith((b"x-", b"list-", b"content-", b"arc-"))


def _block_lines(raw: bytes) -> list[bytes]:
    # Blank lines before the first header field are junk, not the end of the block.
    lead = _LEADING_BLANK_LINES.match(raw)
    begin = lead.end() if lead else 0
    end = raw.find(b"\n\n", begin, _MAX_BLOCK_BYTES)
    end_crlf = raw.find(b"\n\r\n", begin, _MAX_BLOCK_BYTES)
    ends = [e for e in (end, end_crlf) if e != -1]
    stop = min(ends) + 1 if ends else min(len(raw), _MAX_BLOCK_BYTES)
    return _LINE.findall(raw[:stop])


def _skip_leading_junk(lines: list[bytes]) -> int:
    """How many leading lines are junk before a real header block.

    Junk is white space, mbox envelope lines ("From ..." and ">From ...") and at
    most one other line (an archiver's or gateway's note). More text than that
    is a body without headers -- a reply above a quoted header block, whose
    "From:" and "Subject:" are not this message's -- and stays as it is.
    """
    skipped = other = 0
    while skipped < len(lines) and skipped < _MAX_SKIPPED_LINES:
        line = lines[skipped]
        if _FIELD.match(line) and not line.startswith(b"From "):
            break
        if line.strip() and not line.startswith((b"From ", b">From ")):
            other += 1
        skipped += 1
    if skipped == 0 or skipped >= len(lines) or other > 1:
        return 0
    if skipped == 1 and lines[0].startswith(b"From "):
        return 0  # Only an mbox envelope line: the stdlib reads it as one.
    # A quoted header block in a body has From, To, Subject, Date (and Outlook's
    # "Sent:"); a real one has at least one field that nobody types.
    following = lines[skipped:skipped + 40]
    return skipped if any(_is_transport_field(line) for line in following) else 0


def _is_transport_field(line: bytes) -> bool:
    match = _FIELD.match(line)
    return match is not None and _is_known_field(line) and match.group(1).lower() not in {
        b"from", b"to", b"cc", b"bcc", b"subject", b"date", b"sender", b"reply-to"}


def _fix_obsolete_colon(lines: list[bytes]) -> int:
    """Remove white space between a field name and its colon (RFC 5322 obsolete
    syntax, "Subject  : x", which the stdlib does not read as a field)."""
    fixed = 0
    for index, line in enumerate(lines):
        if _is_blank(line):
            break
        match = _OBSOLETE_COLON.match(line)
        # Known names only: "Note : ..." at the top of a headerless body stays text.
        if match and match.group(1).lower() in _KNOWN_FIELDS:
            lines[index] = match.group(1) + line[match.end(0) - 1:]
            fixed += 1
    return fixed


def repair_header_block(raw: bytes) -> tuple[bytes, list[str]]:
    """``raw`` with its header block repaired, and one defect per repair."""
    if raw.startswith((b"\xef\xbb\xbf",)):
        lines = _block_lines(raw[3:])
        offset, defects = 3, ["a byte order mark before the header fields was skipped"]
    else:
        lines = _block_lines(raw)
        offset, defects = 0, []
    if not lines:
        return raw, []
    skipped = _skip_leading_junk(lines)
    if skipped:
        defects.append(f"{skipped} line(s) before the header fields were skipped")
    kept = lines[skipped:]
    fixed = _fix_obsolete_colon(kept)
    if fixed:
        defects.append(f"{fixed} header field name(s) with white space before the colon")
    joined = 0
    in_block = False
    # No header block at all (a body without headers): nothing to join, the text is body.
    has_block = bool(kept) and bool(_HEADER_LIKE.match(kept[0]))
    for index, line in enumerate(kept if has_block else ()):
        if _is_blank(line):
            break
        if _HEADER_LIKE.match(line):
            in_block = in_block or bool(_FIELD.match(line))
            continue
        # Not a header line: the stdlib would end the header block here. It is a
        # continuation when the block goes on with real fields after it.
        if in_block and _block_continues(kept, index + 1):
            kept[index] = b" " + line
            joined += 1
    if joined:
        defects.append(f"{joined} unindented continuation line(s) were joined to their header")
    if not defects:
        return raw, []
    consumed = offset + sum(len(line) for line in lines)
    return b"".join([*kept, raw[consumed:]]), defects


def _block_continues(lines: list[bytes], start: int) -> bool:
    for line in lines[start:]:
        if _is_blank(line):
            return False
        if _is_known_field(line):
            return True
        if not _HEADER_LIKE.match(line) and len(line) > 998:
            return False
    return False
