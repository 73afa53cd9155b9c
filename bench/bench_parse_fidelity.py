"""How well ``mail.parse`` reads the shared email corpus: a corpus-wide report.

Run with the tree's own interpreter (no services; a minute or two)::

    .venv/bin/python bench/bench_parse_fidelity.py [--corpus DIR] [--list-defects N]

For every message the corpus manifest lists, it prints how many:

* parse at all (the rest raise ``UnparseableEmail``: not an email),
* parse with no recorded defect,
* needed a header repair (lines before the header fields, unindented continuation lines,
  several ``From:`` fields, a byte order mark) or lenient transfer decoding (uuencode
  without ``begin``, base64 of invalid length),
* yield a sender address and a subject,
* have an HTML part with visible text after ``</html>``, and how many of those lose any of
  that text in ``html_to_text`` (should be 0),
* have HTML that inscriptis's default ("relaxed") CSS profile turns into more words than
  the "strict" one used (spaces it puts at inline boundaries: split words),
* have East Asian HTML whose text gets a space between two CJK characters that are
  adjacent in the HTML source with only inline tags between them (should be 0).

It measures; it asserts nothing. The corpus is external test data: ``--corpus`` or
``$POSTDESK_CORPUS``, default ``../shared/corpus`` next to the repository.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import re
import sys
import time
from pathlib import Path

import inscriptis
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))   # tests.corpus

from postdesk.mail.parse import (
    UnparseableEmail,
    html_to_text,
    parse_email,
)
from tests.corpus import html_parts  # noqa: E402

_REPAIRS = ("before the header fields were skipped", "unindented continuation",
            "From: header fields", "byte order mark", "white space before the colon",
            "without a begin line", "base64 of invalid length", "base64 without its padding")
_TAG = re.compile(r"<[^>]*>")
_AFTER_HTML = re.compile(r"</html\s*>(.*)", re.IGNORECASE | re.DOTALL)
_RELAXED = ParserConfig(css=CSS_PROFILES["relaxed"], display_links=False, display_images=False)
_CJK = "[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]"
_CJK_SPACED = re.compile(f"({_CJK}) ({_CJK})")
_INLINE_JOIN = re.compile(f"({_CJK})(?:</?(?:span|font|b|i|u|em|strong|a)\\b[^>]*>)+({_CJK})",
                          re.IGNORECASE)


def corpus_files(root: Path) -> list[Path]:
    with (root / "MANIFEST.csv").open(newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.reader(fh))
    return [root / r[1] for r in rows[1:] if len(r) >= 2 and r[1] and (root / r[1]).is_file()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = os.environ.get("POSTDESK_CORPUS") or str(
        Path(__file__).resolve().parents[2] / "shared" / "corpus")
    parser.add_argument("--corpus", default=default)
    parser.add_argument("--list-defects", type=int, default=0, metavar="N",
                        help="also print the N most common defect kinds")
    args = parser.parse_args()
    root = Path(args.corpus)
    if not (root / "MANIFEST.csv").is_file():
        print(f"no corpus at {root}", file=sys.stderr)
        return 2
    counts: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    for path in corpus_files(root):
        raw = path.read_bytes()
        counts["messages"] += 1
        try:
            parsed = parse_email(raw)
        except UnparseableEmail:
            counts["unparseable"] += 1
            continue
        counts["parsed"] += 1
        counts["no defect"] += not parsed.defects
        counts["sender address"] += parsed.from_addr is not None
        counts["subject"] += bool(parsed.subject)
        for repair in _REPAIRS:
            if any(repair in defect for defect in parsed.defects):
                counts[f"repaired: {repair}"] += 1
        for defect in parsed.defects:
            kinds[re.sub(r"\d+", "N", defect.split(": ")[-1])[:70]] += 1
        for html in html_parts(raw):
            counts["HTML parts"] += 1
            text = html_to_text(html)
            after = _AFTER_HTML.search(html)
            visible = " ".join(_TAG.sub(" ", after.group(1)).split()) if after else ""
            if visible:
                counts["HTML parts with text after </html>"] += 1
                words = [w for w in visible.split() if "&" not in w]
                flat = " ".join(text.split())
                counts["  ... losing some of it"] += any(w not in flat for w in words)
            try:
                relaxed = inscriptis.get_text(html, _RELAXED)
            except Exception:  # noqa: BLE001 - lxml on hostile markup
                relaxed = text
            if len(relaxed.split()) > len(text.split()):
                # The default profile would have split words (or CJK runs) here.
                counts["HTML parts the relaxed profile splits more"] += 1
                counts["  ... words split by it"] += len(relaxed.split()) - len(text.split())
            joined = {a + b for a, b in _INLINE_JOIN.findall(html)}
            if joined:
                counts["HTML parts with CJK split by inline tags"] += 1
                spaced = {a + b for a, b in _CJK_SPACED.findall(text)}
                counts["  ... with a space invented there"] += bool(joined & spaced)
    seconds = time.perf_counter() - started
    print(f"corpus {root} ({seconds:.0f} s)")
    width = max(len(k) for k in counts)
    for key in ("messages", "unparseable", "parsed", "no defect", "sender address", "subject"):
        print(f"{key:<{width}}  {counts[key]:>6}")
    for key in sorted(k for k in counts if k.startswith("repaired")):
        print(f"{key:<{width}}  {counts[key]:>6}")
    for key in ("HTML parts", "HTML parts the relaxed profile splits more",
                "  ... words split by it",
                "HTML parts with text after </html>", "  ... losing some of it",
                "HTML parts with CJK split by inline tags", "  ... with a space invented there"):
        print(f"{key:<{width}}  {counts[key]:>6}")
    for kind, number in kinds.most_common(args.list_defects):
        print(f"  {number:>5}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
