"""Where the shared email corpus is, for the corpus-driven tests.

The corpus is external test data (mixed licences, see its INDEX.md), so it is
not in the repository; tests that need it skip when it is absent.
"""

from __future__ import annotations

import csv
import email
import functools
import os
from pathlib import Path

import pytest

from postdesk.mail.parse import decode_bytes, own_parts


def corpus_dir() -> Path | None:
    """The corpus root: ``$POSTDESK_CORPUS`` if set, else ``<work>/shared/corpus``.

    ``None`` when that directory holds no ``MANIFEST.csv``; setting the
    variable to a missing path is how to run without the corpus tests.
    """
    configured = os.environ.get("POSTDESK_CORPUS")
    # tests/ is inside the repository, which sits next to shared/.
    default = Path(__file__).resolve().parents[2] / "shared" / "corpus"
    candidate = Path(configured) if configured else default
    return candidate if (candidate / "MANIFEST.csv").is_file() else None


requires_corpus = pytest.mark.skipif(corpus_dir() is None, reason="email corpus not available")


@functools.cache
def manifest_files() -> tuple[str, ...]:
    """Relative paths of every message the manifest lists and the corpus has.

    Some charset columns of the manifest contain raw line breaks, which make
    stray one-field rows; rows whose second field is not a file are skipped.
    """
    root = corpus_dir()
    if root is None:
        return ()
    with (root / "MANIFEST.csv").open(newline="", encoding="utf-8", errors="replace") as handle:
        rows = list(csv.reader(handle))
    return tuple(
        row[1] for row in rows[1:] if len(row) >= 2 and row[1] and (root / row[1]).is_file()
    )


def read(relative: str) -> bytes:
    root = corpus_dir()
    assert root is not None, "corpus not available"
    return (root / relative).read_bytes()


def html_parts(raw: bytes) -> list[str]:
    """The decoded text of each HTML part of an email (its own parts, not those of
    attached emails), for the checks that the text converter keeps everything."""
    out = []
    for part in own_parts(email.message_from_bytes(raw)):
        if part.get_content_type() == "text/html":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                out.append(decode_bytes(data, part.get_content_charset()))
    return out
