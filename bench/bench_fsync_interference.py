"""How much a synced SQLite commit slows down while another process on the same file
system syncs too: the door's spool commit (a 2 KB row, WAL, ``synchronous=FULL``) alone,
then with a second process doing what ``postdesk serve``'s desk does during a burst (a
file written and fsynced, as the local outbox delivers each email, and a commit to its
own database), in a loop with ``--pause`` seconds between rounds (0: back to back).

Run from the repository root (standard library only)::

    python3 bench/bench_fsync_interference.py [--commits 300] [--rounds 2] [--pause 0]

The files go to a temporary directory under ``--dir`` (default: the repository's
``build/``, the same file system as a desk's data_dir in a checkout). Prints the median
commit time alone and with the writer, per round; asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROW = 2048


def median_commit_ms(db: Path, commits: int) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS spool (content BLOB)")
    row = os.urandom(ROW)
    took = []
    for _ in range(commits):
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO spool VALUES (?)", (row,))
        conn.execute("COMMIT")
        took.append(time.perf_counter() - started)
    conn.close()
    return statistics.median(took) * 1000


def busy_writer(root: str, pause: float, stop: Any) -> None:
    """A synced file per round (the outbox's delivery) and a commit (the desk's)."""
    db = sqlite3.connect(os.path.join(root, "desk.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    i = 0
    while not stop.is_set():
        path = os.path.join(root, f"mail-{i}")
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, os.urandom(3000))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path + ".tmp", path)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (os.urandom(ROW),))
        db.execute("COMMIT")
        i += 1
        if pause:
            time.sleep(pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[1] / "build")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="fsync-"))
    print(f"synced SQLite commits of a {ROW}-byte row in {root}, load "
          f"{os.getloadavg()[0]:.2f}; writer pause {args.pause} s")
    try:
        for n in range(args.rounds):
            alone = median_commit_ms(root / f"alone-{n}.db", args.commits)
            stop = mp.Event()
            writer = mp.Process(target=busy_writer, args=(str(root), args.pause, stop))
            writer.start()
            time.sleep(0.5)
            try:
                shared = median_commit_ms(root / f"shared-{n}.db", args.commits)
            finally:
                stop.set()
                writer.join()
            print(f"round {n + 1}: median {alone:.2f} ms alone, {shared:.2f} ms with the "
                  f"writer ({shared / alone:.2f}x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
