"""One installed name: the design card's folders install as subpackages of ``postdesk``
(pyproject package-dir), and nothing else lands in site-packages."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_folder_with_an_init_is_a_declared_package() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {folder: name for name, folder in setup["package-dir"].items()}
    declared = set(setup["packages"])
    found = set()
    for top, name in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found == declared


@pytest.mark.slow
def test_the_wheel_holds_only_postdesk(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("postdesk-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"postdesk"}
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("postdesk/workflow/pipeline/builtin.py", "postdesk/ingest/smtp.py",
                   "postdesk/mail/parse.py", "postdesk/storage/models.py",
                   "postdesk/templates/acknowledgement.txt",
                   "postdesk/storage/migrations/versions/0002_outbox_drafts.py"):
        assert module in names
