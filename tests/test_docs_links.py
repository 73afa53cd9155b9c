"""The documentation is self-contained: every relative link in README.md and docs/ points
to a file of this repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_resolves_inside_the_repository() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert {"configuration.md", "cli.md", "production.md", "metrics.md"} <= {
        p.name for p in pages}
    checked = 0
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue   # a URL, not a file
            path = (page.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
            assert path.exists(), f"{page.name}: {target} does not exist"
            checked += 1
    assert checked > 10


def test_the_readme_links_the_reference_pages() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/configuration.md", "docs/cli.md", "docs/production.md",
                 "docs/metrics.md", "docs/security.md"):
        assert f"]({page})" in readme, page
