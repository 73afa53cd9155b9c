"""The garbage collector is paused for a command's start-up only (postdesk.cli._main): off
while the command starts, on while it works and after it, and left off when it was off."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postdesk import cli, importer
from tests.support import backend, config_text


@pytest.fixture
def empty_import(tmp_path: Path) -> Iterator[list[str]]:
    """The arguments of an import of an empty mbox into a desk on the current schema."""
    was = gc.isenabled()
    with backend("sqlite", tmp_path, migrated=True) as be:
        config = tmp_path / "postdesk.toml"
        config.write_text(config_text(be, tmp_path / "data"))
        mbox = tmp_path / "empty.mbox"
        mbox.write_bytes(b"")
        yield ["import", "mbox", str(mbox), "--json", "--config", str(config)]
    gc.enable() if was else gc.disable()


def test_off_while_starting_on_while_working_and_after(
        empty_import: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, bool] = {}
    real_setup, real_import = cli._setup_logging, importer.import_paths

    def setup_logging(*args: Any) -> None:
        seen["starting"] = gc.isenabled()
        real_setup(*args)

    def import_paths(*args: Any, **kwargs: Any) -> Any:
        seen["working"] = gc.isenabled()
        return real_import(*args, **kwargs)

    monkeypatch.setattr(cli, "_setup_logging", setup_logging)
    monkeypatch.setattr(importer, "import_paths", import_paths)
    gc.enable()
    assert cli.main(empty_import) == 0
    assert seen == {"starting": False, "working": True}
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0   # nothing left out of collections after the command


def test_on_again_after_a_command_that_failed(empty_import: list[str], tmp_path: Path) -> None:
    gc.enable()
    assert cli.main([*empty_import[:-1], str(tmp_path / "missing.toml")]) != 0
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off(empty_import: list[str]) -> None:
    gc.disable()
    assert cli.main(empty_import) == 0
    assert not gc.isenabled()
