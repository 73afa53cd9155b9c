"""The header repair, the charset and transfer leniency and the HTML converter over the
whole shared corpus (external test data; skipped without it). The numbers per class are
printed by bench/bench_parse_fidelity.py; these tests hold the rules that must not break."""

from __future__ import annotations

import re

import pytest

from postdesk.mail.parse import (
    UnparseableEmail,
    html_to_text,
    parse_email,
)
from tests.corpus import html_parts, manifest_files, read, requires_corpus

pytestmark = [requires_corpus, pytest.mark.slow]

_TAG = re.compile(r"<[^>]*>")
_AFTER_HTML = re.compile(r"</html\s*>(.*)", re.IGNORECASE | re.DOTALL)
_REPAIRS = ("before the header fields were skipped", "unindented continuation",
            "white space before the colon", "byte order mark")


def test_no_corpus_html_body_loses_the_text_after_its_end_tag() -> None:
    checked = 0
    for name in manifest_files():
        for html in html_parts(read(name)):
            after = _AFTER_HTML.search(html)
            words = " ".join(_TAG.sub(" ", after.group(1)).split()).split() if after else []
            words = [w for w in words if "&" not in w]
            if words:
                checked += 1
                text = " ".join(html_to_text(html).split())
                assert [w for w in words if w not in text] == [], name
    assert checked >= 1   # the corpus has such bodies; the check ran on them


def test_headerless_bodies_are_never_given_headers_or_changed() -> None:
    # The reply-parser corpora are bodies without headers, some quoting a header block
    # ("From: ... Sent: ... Subject: ..."): those lines are the client's text, not ours.
    bodies = [name for name in manifest_files() if "/bodies/" in name]
    assert bodies
    for name in bodies:
        raw = read(name)
        try:
            parsed = parse_email(raw)
        except UnparseableEmail:
            continue
        assert [d for d in parsed.defects if any(r in d for r in _REPAIRS)] == [], name
