"""Files at rest: the SQLite database and data_dir hold every client's email, so a new
desk creates them readable by its owner only."""

from __future__ import annotations

import stat
from pathlib import Path

from postdesk.app import App
from postdesk.workflow.rules.config import parse_config
from tests.support import Backend, config_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_desk_creates_its_database_0600_and_data_dir_0700(tmp_path: Path) -> None:
    db = tmp_path / "desk" / "postdesk.db"
    data = tmp_path / "desk" / "data"
    be = Backend("sqlite", f"sqlite:///{db}", "stub://", "files")
    cfg = parse_config(config_text(be, data).replace('secret = "test-secret-key"\n', ""),
                       environ={})
    with App.open(cfg) as app:
        app.upgrade_database()
    assert mode(db) == 0o600
    assert mode(data) == 0o700
    assert mode(data / "secret.key") == 0o600
