"""Files at rest: the SQLite database and data_dir hold every client's email, so a new
desk creates them readable by its owner only."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

from postdesk.app import App
from postdesk.workflow.rules.config import parse_config
from tests.support import Backend, config_text, wait_for


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


def test_processes_started_together_on_a_new_data_dir_all_start_with_one_secret(
        tmp_path: Path) -> None:
    """``postdesk smtp``, the workers and the scheduler start at once on a fresh
    deployment: each may find data_dir missing and make it, and find no secret and make
    one. None may fail for the others' doing it first, and all must sign with the same
    key (a Message-ID one process signs, another must verify)."""
    db = tmp_path / "desk" / "postdesk.db"
    data = tmp_path / "desk" / "data"
    be = Backend("sqlite", f"sqlite:///{db}", "stub://", "files")
    text = config_text(be, data).replace('secret = "test-secret-key"\n', "")
    # Each process loads everything, says it is ready, and waits for the word to go:
    # then all of them open the desk at the same moment.
    script = (
        "import os, sys, time\n"
        "from postdesk.app import App\n"
        "from postdesk.workflow.rules.config import parse_config\n"
        "cfg = parse_config(open(sys.argv[1]).read(), environ={})\n"
        "open(sys.argv[2] + '.' + str(os.getpid()), 'w').close()\n"
        "while not os.path.exists(sys.argv[3]):\n"
        "    time.sleep(0.0005)\n"
        "with App.open(cfg) as app:\n"
        "    print(app.services.secret.decode())\n")
    config = tmp_path / "postdesk.toml"
    config.write_text(text)
    for attempt in range(3):   # a race: run it more than once, each on a new data_dir
        if data.exists():
            shutil.rmtree(data)
        ready, go = tmp_path / f"ready{attempt}", tmp_path / f"go{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", script, str(config), str(ready),
                                   str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(6)]
        pattern = f"{ready.name}.*"
        wait_for(lambda: len(list(tmp_path.glob(pattern))) == 6, 120, 0.05,  # noqa: B023
                 what="six processes ready")
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, [err.decode()[-800:]
                                                          for _, err in outputs]
        secrets = {out.decode().strip() for out, _ in outputs}
        assert len(secrets) == 1 and len(secrets.pop()) == 64
        assert (data / "secret.key").read_bytes().strip().decode() in {
            out.decode().strip() for out, _ in outputs}
        assert mode(data) == 0o700 and mode(data / "secret.key") == 0o600
        assert [p.name for p in data.iterdir() if p.name.startswith(".secret")] == []
