"""Looked at, not just parsed: headless Chromium renders the digest, the statement and the
acknowledgement to PNG; the picture is not blank and the bars are there, in their
colours and at their widths (pixels read with Pillow).

``POSTDESK_WRITE_EXAMPLES=1`` also copies the pictures to docs/examples/ (how the ones
linked from the README were made)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from postdesk.storage.directory import org_by_slug
from postdesk.storage.models import Ticket
from postdesk.workflow.desk.digest import build_digest
from postdesk.workflow.desk.services import Services
from postdesk.workflow.desk.statement import build_statement
from postdesk.workflow.rules.report import GOOD_COLOUR, POOR_COLOUR
from tests.desk.test_digest_report import NOW as DIGEST_NOW
from tests.desk.test_digest_report import fixture_month  # noqa: F401  (a fixture)
from tests.desk.test_statement import NOW as STATEMENT_NOW
from tests.desk.test_statement import STATEMENT_DESK, base_co  # noqa: F401  (a fixture)

Image = pytest.importorskip("PIL.Image")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
pytestmark = pytest.mark.slow


@pytest.fixture
def config_extra() -> str:
    return STATEMENT_DESK


def screenshot(html: str, tmp_path: Path, name: str, height: int = 1600) -> object:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    page = tmp_path / f"{name}.html"
    page.write_text(html, encoding="utf-8")
    png = tmp_path / f"{name}.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                    # No network at all: anything the HTML tried to load would fail.
                    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                    f"--window-size=1100,{height}", f"--screenshot={png}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    if os.environ.get("POSTDESK_WRITE_EXAMPLES") == "1":
        EXAMPLES.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, EXAMPLES / f"{name}.png")
    return Image.open(png).convert("RGB")


def rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def runs(image: object, colour: str) -> set[int]:
    """Lengths of the horizontal runs of ``colour`` (within 6 per channel) on any row."""
    target = rgb(colour)
    width, height = image.size  # type: ignore[attr-defined]
    pixels = image.load()  # type: ignore[attr-defined]
    found: set[int] = set()
    for y in range(height):
        run = 0
        for x in range(width):
            if all(abs(a - b) <= 6 for a, b in zip(pixels[x, y], target, strict=True)):
                run += 1
            else:
                if run:
                    found.add(run)
                run = 0
        if run:
            found.add(run)
    return found


def assert_not_blank(image: object) -> None:
    colours = image.getcolors(maxcolors=1 << 20)  # type: ignore[attr-defined]
    assert colours is not None and len(colours) > 20, "a blank or near-blank picture"
    white = sum(count for count, c in colours if c == (255, 255, 255))
    total = image.size[0] * image.size[1]  # type: ignore[attr-defined]
    assert white < total * 0.98, "almost all white"


def test_the_digest_renders_with_its_bars(fixture_month: Services, tmp_path: Path):  # noqa: F811
    digest = build_digest(fixture_month, DIGEST_NOW)
    body = fixture_month.renderer.render("digest", {"d": digest, "ticket": None,
                                                    "desk": fixture_month.config.desk})
    assert body.html is not None
    image = screenshot(body.html, tmp_path, "digest")
    assert_not_blank(image)
    red, green = runs(image, POOR_COLOUR), runs(image, GOOD_COLOUR)
    assert 133 in red       # Client Co P3 first response: 66.7 % of 200 px
    assert 200 in red       # Base Co's hours: over the allowance, a full red bar
    assert 200 in green     # Base Co P3: 100 %


def test_the_statement_renders_with_its_bars(base_co: Session, services: Services,  # noqa: F811
                                             tmp_path: Path):
    org = org_by_slug(base_co, "baseco")
    assert org is not None
    statement = build_statement(base_co, services, org, 2026, 11, STATEMENT_NOW)
    body = services.renderer.render("statement", {"s": statement, "ticket": None,
                                                  "desk": services.config.desk})
    assert body.html is not None
    image = screenshot(body.html, tmp_path, "statement", height=1100)
    assert_not_blank(image)
    assert 200 in runs(image, POOR_COLOUR)    # 6h used of 5h 30m: over, full red
    assert 200 in runs(image, GOOD_COLOUR)    # P2 first response 1 of 1


def test_the_acknowledgement_renders(session: Session, services: Services,
                                     new_ticket: Callable[..., Ticket], tmp_path: Path):
    ticket = new_ticket(subject="Checkout page shows an error after the last deploy")
    body = services.renderer.render("acknowledgement", {
        "ref": "PD-1", "requester_name": "Alice", "ticket": ticket,
        "desk": services.config.desk, "first_response_due": "Mon 23 Nov 2026 15:00 GMT",
        "org_timezone": "Europe/London",
        "support_hours": "Mon-Fri 08:00-18:00 (Europe/London time), closed on public "
                         "holidays (GB-ENG)", "escalation_keyword": "CLIENTCO-URGENT"})
    assert body.html is not None
    image = screenshot(body.html, tmp_path, "acknowledgement", height=700)
    assert_not_blank(image)
    # The escalation box: its orange left border is drawn.
    assert any(run >= 3 for run in runs(image, "#ef6c00"))
