"""Charsets the stdlib codecs get wrong for email: ISO-2022-JP as Japanese
mail clients really write it, and 8-bit bytes that declare no charset at all.

Pure and total: nothing here raises on any input.
"""

from __future__ import annotations

import re

__all__ = ["decode_iso2022jp", "detect_cjk_charset", "is_iso2022jp", "is_multibyte",
           "plausible_cjk"]

# Escape sequences of ISO-2022-JP (RFC 1468) and the sets its supersets add.
_ESCAPE = re.compile(rb"\x1b(\(B|\(J|\(I|\$@|\$B|\$\(D|\$\(Q|\$\(O|\$\(P|&@\x1b\$B)")
_ROMAN = {b"(B", b"(J"}
_KANA = b"(I"
_JIS_ROMAN = {0x5C: "\u00a5", 0x7E: "\u203e"}
_JIS_X_0208 = {b"$@", b"$B", b"$(Q", b"$(O", b"&@\x1b$B"}


def is_iso2022jp(codec: str) -> bool:
    return codec.replace("-", "_").startswith("iso2022_jp")


def _jis_to_shift_jis(first: int, second: int) -> bytes:
    # The arithmetic mapping of JIS X 0208 rows onto Shift_JIS (JIS X 0208:1997
    # annex 1). It is defined for every row 0x21-0x7E, so the NEC special row 13
    # (circled digits, roman numerals) and the NEC-selected IBM extension rows
    # 89-92 land exactly where cp932 decodes them.
    low = second + 0x1F + (second >= 0x60) if first % 2 else second + 0x7E
    high = (first + 1) // 2 + 0x70
    if high >= 0xA0:
        high += 0x40
    return bytes((high, low))


def decode_iso2022jp(data: bytes) -> str:
    """ISO-2022-JP decoded as Windows and most Japanese mail clients encode it
    (Microsoft's CP50220 family): JIS X 0208 through cp932, so the NEC and IBM
    extension characters (①, Ⅰ, ㈱, 髙...) that strict codecs reject survive.
    JIS X 0212 runs go to the stdlib's iso2022_jp_2; bytes that are still
    undecodable become U+FFFD. Never raises."""
    out: list[str] = []
    mode = b"(B"
    position = 0
    for match in [*_ESCAPE.finditer(data), None]:
        end = match.start() if match else len(data)
        chunk = data[position:end]
        if chunk:
            out.append(_decode_run(mode, chunk))
        if match is None:
            break
        mode = match.group(1)
        position = match.end()
    return "".join(out)


# Where cp932 maps a JIS X 0208 character differently from the JIS table (the
# wave dash and five more), keep the JIS one: text that a strict codec reads is
# then read identically, and only the extension characters are new.
_JIS_TABLE_CHARS = {(0x21, 0x41): "\u301c", (0x21, 0x42): "\u2016", (0x21, 0x5D): "\u2212",
                    (0x21, 0x71): "\u00a2", (0x21, 0x72): "\u00a3", (0x22, 0x4C): "\u00ac"}


def _decode_run(mode: bytes, chunk: bytes) -> str:
    if mode in _ROMAN:
        # 7-bit only: a stray 8-bit byte is not the start of a Shift_JIS pair.
        text = chunk.decode("ascii", "replace")
        return text.translate(_JIS_ROMAN) if mode == b"(J" else text
    if mode == _KANA:   # JIS X 0201 katakana: 0x21-0x5F are U+FF61-U+FF9F
        return "".join(chr(0xFF40 + b) if 0x21 <= b <= 0x5F else chr(b) if b < 0x80
                       else "\ufffd" for b in chunk)
    if mode in _JIS_X_0208:
        pieces: list[str] = []
        index = 0
        while index < len(chunk):
            first = chunk[index]
            if first in b"\r\n" or index + 1 >= len(chunk):
                # A line end inside a double-byte run (a missing "ESC ( B"):
                # keep the byte; well-formed text never has it there.
                pieces.append(chr(first) if first < 0x80 else "\ufffd")
                index += 1
                continue
            second = chunk[index + 1]
            if (first, second) in _JIS_TABLE_CHARS:
                pieces.append(_JIS_TABLE_CHARS[first, second])
            elif 0x21 <= first <= 0x7E and 0x21 <= second <= 0x7E:
                pieces.append(_jis_to_shift_jis(first, second).decode("cp932", "replace"))
            else:
                pieces.append("\ufffd")
            index += 2
        return "".join(pieces)
    # JIS X 0212 and JIS X 0213 plane 2: the stdlib codec knows them.
    return (b"\x1b" + mode + chunk).decode("iso2022_jp_2", "replace")


# Multi-byte charsets reject most text that is not theirs, so a strict decode
# that succeeds is evidence; a single-byte charset decodes anything at all.
_MULTIBYTE = ("gb", "big5", "cp932", "cp949", "cp950", "shift_jis", "euc", "iso2022",
              "utf", "hz", "johab")


def is_multibyte(codec: str) -> bool:
    return codec.replace("-", "_").startswith(_MULTIBYTE)


# What the detector may name for undeclared bytes. On the few dozen bytes of a
# subject or a file name its single-byte guesses are noise (German comes out
# as cp1006, Russian as cp1125), so only East Asian double-byte charsets are
# taken from it; Latin text keeps the windows-1252 fallback.
_CJK_CHARSETS = ("gb18030", "gbk", "gb2312", "big5", "big5hkscs", "cp950", "cp932",
                 "shift_jis", "euc_jp", "euc_jis_2004", "euc_kr", "cp949", "johab")
_CJK_RANGES = ((0x2460, 0x24FF), (0x2E80, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
               (0xFF01, 0xFF60))


def plausible_cjk(text: str) -> bool:
    """True when every non-ASCII character of ``text`` is East Asian script or
    punctuation: what text in a double-byte charset decodes to, and what Latin
    bytes mis-read as one (half-width katakana, symbols) mostly do not."""
    wide = [ord(char) for char in text if ord(char) > 0x7F]
    return bool(wide) and all(any(lo <= code <= hi for lo, hi in _CJK_RANGES) for code in wide)


_HIGH_PAIR = re.compile(rb"[\x80-\xff]{2,}")


def _mostly_paired(sample: bytes) -> bool:
    # Double-byte text comes in runs of high bytes; Latin text has single
    # accented letters between ASCII ones ("\xc5re", "M\xfcller").
    high = sum(1 for byte in sample if byte >= 0x80)
    paired = sum(len(run) for run in _HIGH_PAIR.findall(sample))
    return paired * 2 >= high


def detect_cjk_charset(sample: bytes) -> str | None:
    """The East Asian charset charset-normalizer finds for ``sample`` (the
    undeclared 8-bit header bytes of one message), when the whole sample
    decodes in it to East Asian text; else None."""
    if not sample or max(sample) < 0x80 or not _mostly_paired(sample):
        return None
    # Imported on first use: only undeclared 8-bit header bytes get here, and the package
    # costs ~0.01 s CPU at every start otherwise.
    import charset_normalizer

    try:
        best = charset_normalizer.from_bytes(sample).best()
    except Exception:  # noqa: BLE001 - a detector bug must not lose the email
        return None
    if best is None or best.encoding not in _CJK_CHARSETS:
        return None
    try:
        text = sample.decode(best.encoding)
    except (UnicodeError, LookupError):
        return None
    return best.encoding if plausible_cjk(text) else None
