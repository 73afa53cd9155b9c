"""``postdesk backup DEST`` and ``postdesk restore SRC``: the database and ``data_dir``
(raw mail too large for its row and attachments in ``blobs/``, the secret, template
overrides, the outbox maildir) saved together, consistently, while the desk runs.

Why it is consistent without stopping anything: blobs are content-addressed and written
(fsynced) before the row that names them commits, and never deleted. So the database is
copied first, as one snapshot (SQLite's online backup API; ``pg_dump``'s one
transaction), and ``data_dir`` after it: every blob the snapshot names is already on disk.
Mail accepted after the snapshot may add blobs nobody names yet; they are harmless. The
SMTP door's spool (``serve`` on SQLite: emails answered 250 and not yet moved into the
database) is copied with the backup API too, before the database: an email moved out of
it before the database's snapshot is in that snapshot, and one still spooled is moved by
the restored ``serve``.

Restore is for the embedded default (SQLite): it refuses to overwrite a database that
exists. On PostgreSQL restore with ``pg_restore`` (docs/production.md)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from postdesk.storage.blobs import fsync_dir
from postdesk.storage.spool import SPOOL_FILE
from postdesk.workflow.rules.config import Config
from postdesk.workflow.rules.errors import UserError

MANIFEST = "manifest.json"
SQLITE_FILE = "postdesk.db"
PG_DUMP_FILE = "postgres.dump"
DATA = "data"


def _sqlite_path(config: Config) -> Path | None:
    url = make_url(config.desk.database_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise UserError("desk.database_url: an in-memory database cannot be backed up")
    return Path(url.database)


def _sqlite_files(db_file: Path) -> set[str]:
    return {f"{db_file.name}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")}


def _ignore_live_sqlite(data_dir: Path, db_file: Path | None) -> Any:
    """copytree ignore: the live SQLite files in data_dir (the desk's database if it lives
    there, the door's spool), which are copied by SQLite's backup API instead: a file copy
    of a database being written can be torn."""
    ignored: dict[Path, set[str]] = {data_dir.resolve(): _sqlite_files(data_dir / SPOOL_FILE)}
    if db_file is not None:
        ignored.setdefault(db_file.parent.resolve(), set()).update(_sqlite_files(db_file))

    def ignore(directory: str, entries: list[str]) -> set[str]:
        return ignored.get(Path(directory).resolve(), set()) & set(entries)
    return ignore


def _copy_sqlite(source_file: Path, target_file: Path) -> None:
    source = sqlite3.connect(source_file)
    target = sqlite3.connect(target_file)
    try:
        with target:
            source.backup(target)   # one consistent snapshot, writers keep going
    finally:
        target.close()
        source.close()
    target_file.chmod(0o600)


def _fsync_tree(root: Path) -> None:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(directory)


def backup(config: Config, dest: Path) -> dict[str, Any]:
    """Write a backup into the new directory ``dest``; returns its manifest."""
    data_dir = Path(config.desk.data_dir)
    if dest.resolve().is_relative_to(data_dir.resolve()):
        raise UserError(f"{dest}: is inside desk.data_dir; the next backup would copy it")
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest}: exists and is not empty; give a new directory")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest.chmod(0o700)   # raw mail and the secret: owner only, like data_dir
    db_file = _sqlite_path(config)
    if db_file is not None and not db_file.exists():
        raise UserError(f"desk.database_url: {db_file} does not exist")
    # The door's spool before the database: an email moved out of the spool before this
    # snapshot is in the database's, taken after; one still spooled is in this one (and
    # moved on restore; bytes in both are one raw message).
    (dest / DATA).mkdir(mode=0o700)
    if (data_dir / SPOOL_FILE).exists():
        _copy_sqlite(data_dir / SPOOL_FILE, dest / DATA / SPOOL_FILE)
    if db_file is not None:
        database = {"kind": "sqlite", "file": SQLITE_FILE}
        _copy_sqlite(db_file, dest / SQLITE_FILE)
    else:
        database = {"kind": "postgresql", "file": PG_DUMP_FILE}
        _pg_dump(config.desk.database_url, dest / PG_DUMP_FILE)
    if data_dir.exists():
        shutil.copytree(data_dir, dest / DATA, ignore=_ignore_live_sqlite(data_dir, db_file),
                        dirs_exist_ok=True)
    manifest = {
        "postdesk_backup": 1,
        "created_at": datetime.now(UTC).isoformat(),
        "database": database,
        "data_dir": DATA,
        # A secret set in the config or POSTDESK_SECRET is not in data_dir: keep it with
        # the backup by other means, or replies to old emails will not thread.
        "secret": "data_dir/secret.key" if config.desk.secret is None else "config",
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _fsync_tree(dest)
    return manifest


def _libpq_url(url: str) -> str:
    """pg_dump takes a libpq URL: no SQLAlchemy ``+driver`` suffix."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _pg_dump(url: str, target: Path) -> None:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise UserError("desk.database_url is PostgreSQL and pg_dump is not installed: "
                        "install the PostgreSQL client (same major version as the server)")
    proc = subprocess.run([pg_dump, "--format=custom", "--no-owner", "--file", str(target),
                           "--dbname", _libpq_url(url)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"pg_dump failed: {proc.stderr.strip()}")


def restore(config: Config, src: Path, *, force: bool = False) -> dict[str, Any]:
    """Put the backup ``src`` in place of the config's (empty) database and data_dir."""
    try:
        manifest: dict[str, Any] = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{src}: not a postdesk backup (no readable {MANIFEST})") from None
    if manifest["database"]["kind"] != "sqlite":
        raise UserError(f"{src}: a PostgreSQL backup; restore it with pg_restore "
                        "(docs/production.md), then copy its data/ into data_dir")
    db_file = _sqlite_path(config)
    if db_file is None:
        raise UserError("desk.database_url: restore writes the embedded SQLite database; "
                        "on PostgreSQL use pg_restore (docs/production.md)")
    if db_file.exists() and db_file.stat().st_size > 0 and not force:
        raise UserError(f"{db_file} exists; restore only into a new place (or --force)")
    data_dir = Path(config.desk.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copytree(src / manifest["data_dir"], data_dir, dirs_exist_ok=True)
    db_file.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    tmp = db_file.with_name(db_file.name + ".restoring")
    shutil.copyfile(src / manifest["database"]["file"], tmp)
    tmp.chmod(0o600)
    os.replace(tmp, db_file)
    _fsync_tree(data_dir)
    fsync_dir(db_file.parent)
    return manifest
