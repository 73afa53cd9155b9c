"""``postdesk import mbox --notify`` against Roundup 2.6.0's ``roundup-mailgw`` on the same
generated mbox of new-ticket emails: tickets per second and CPU per ticket, both measured in
the same run, and their ratio.

Run (from any directory, with any python3; the script re-executes itself with the measured
tree's own ``.venv/bin/python``)::

    python3 bench/bench_import_peers.py                         # 1000 emails, best of 2
    python3 bench/bench_import_peers.py --emails 500 --repeat 3
    python3 bench/bench_import_peers.py --postdesk-backends sqlite,postgres \\
        --roundup-backends sqlite,anydbm
    python3 bench/bench_import_peers.py --postdesk-batches 1,25,100   # ``import --batch N``
    python3 bench/bench_import_peers.py --postdesk-workers 0,1        # ``import --workers N``

Roundup is installed, when missing, into its own venv from the package index
(``python3 -m venv build/roundup-venv && build/roundup-venv/bin/pip install
roundup==2.6.0``; ``--roundup-venv`` chooses another place). Nothing of Roundup is kept in
the repository: ``build/`` is ignored by git.

The mail: ``--emails`` messages of about ``--size`` bytes (2 KB), plain text, each with its
own subject and Message-ID, so each opens a ticket, from ``--senders`` client addresses
(round robin) that both systems know beforehand: postdesk by the org's domain in its config,
Roundup as users created before the timed run (Roundup refuses mail from unknown addresses
unless anonymous registration by email is opened).

The runs, interleaved over ``--repeat`` rounds; the summary takes each variant's best run
(other load on a shared machine only ever slows a run down):

* postdesk: a fresh desk (its own temp dir, config and database: SQLite by default, or
  PostgreSQL on 127.0.0.1 in a database created and dropped per run), ``postdesk db
  upgrade`` untimed, then ``postdesk import mbox MBOX --notify --json`` timed. Each new
  ticket gets its acknowledgement and its staff notification rendered and composed into the
  outbox (``broker_url = "stub://"``: sending them is a worker's job and is not timed).
* Roundup: a fresh tracker (``roundup-admin install classic BACKEND``, ``initialise``, the
  client users created) untimed, then ``roundup-mailgw TRACKER mailbox COPY`` timed (one
  process for the whole mbox, as postdesk; ``mailbox`` consumes its file, so it reads a
  copy). ``nosy.messages_to_author = yes``, so each new issue sends its author a copy of the
  message (Roundup's nearest thing to an acknowledgement), written to a file by
  ``mail.debug`` instead of an SMTP server.

CPU = user + system time of the command and every process it waited for
(``RUSAGE_CHILDREN``), so postdesk's parsing process is counted too; a PostgreSQL server's
own CPU is not (SQLite, Roundup's included, runs inside the command). "fixed" is the same
command on an empty mbox (interpreter start, imports, opening the database): "net
ms/ticket" leaves it out. The tree's bytecode is written first (``compileall``, untimed), as
pip does for Roundup's install. Loopback only; asserts nothing; prints a table.
"""

from __future__ import annotations

import argparse
import json
import mailbox
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline_locks import CONFIG_TEMPLATE, pg_admin  # noqa: E402
from benchlib import (  # noqa: E402
    DEFAULT_PG_ADMIN,
    SUPPORT,
    Tree,
    child_env,
    fmt,
    free_port,
    load_average,
    print_head,
    python_line,
    require_loopback,
)
from benchlib import database_url as pg_database_url  # noqa: E402
from benchlib import reexec_in_tree as _reexec_in_tree  # noqa: E402

SCRIPT = Path(__file__).resolve()
DEFAULT_TREE = SCRIPT.parent.parent
ROUNDUP_VERSION = "2.6.0"


def reexec_in_tree(tree: Tree) -> None:
    """Run with the tree's own interpreter: re-execute THIS script there."""
    _reexec_in_tree(tree, SCRIPT)


BODY_LINE = "The printer on the third floor shows 'PC LOAD LETTER' again since Monday."


# --- the mail -----------------------------------------------------------------------------

def make_email(i: int, senders: int, size: int, tag: str) -> EmailMessage:
    sender = i % senders
    msg = EmailMessage()
    msg["From"] = f"Client {sender} <client{sender}@client.example>"
    msg["To"] = SUPPORT
    msg["Subject"] = f"Printer {i} on floor {i % 7} does not print ({tag})"
    msg["Message-ID"] = f"<import-{tag}-{i}@client.example>"
    msg["Date"] = formatdate(localtime=False)
    head = len(msg.as_bytes()) + 120   # the Content-* headers set_content adds
    body = [f"Hello,\n\nticket {i}: printer {i} has stopped printing.\n"]
    length = len(body[0])
    while length < size - head - 40:
        body.append(BODY_LINE + "\n")
        length += len(BODY_LINE) + 1
    body.append(f"\nThanks,\nClient {sender}\n")
    msg.set_content("".join(body))
    return msg


def write_mbox(path: Path, emails: int, senders: int, size: int, tag: str) -> int:
    box = mailbox.mbox(path, create=True)
    box.lock()
    try:
        for i in range(emails):
            box.add(make_email(i, senders, size, tag))
        box.flush()
    finally:
        box.unlock()
        box.close()
    return path.stat().st_size


# --- timing a command ----------------------------------------------------------------------

@dataclass
class Timed:
    wall_s: float
    cpu_s: float
    returncode: int
    stdout: str
    stderr: str


def timed(cmd: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None,
          timeout: float = 1800) -> Timed:
    """Wall time and the CPU of the command and its reaped children. This script runs one
    child at a time, so the RUSAGE_CHILDREN difference is that command's alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu, proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Row:
    tool: str
    backend: str
    emails: int
    tickets: int
    wall_s: float
    cpu_s: float
    fixed_cpu_s: float
    fixed_wall_s: float
    emails_out: str
    load: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.tickets / self.wall_s if self.wall_s and self.tickets else 0.0

    @property
    def cpu_ms(self) -> float | None:
        return self.cpu_s * 1000 / self.tickets if self.tickets else None

    @property
    def net_cpu_ms(self) -> float | None:
        if not self.tickets:
            return None
        return max(0.0, self.cpu_s - self.fixed_cpu_s) * 1000 / self.tickets


# --- postdesk --------------------------------------------------------------------------------

def run_postdesk(args: argparse.Namespace, tree: Tree, backend: str, mbox: Path,
                 empty: Path, batch: int | None = None, workers: int | None = None) -> Row:
    """``batch``, ``workers``: run ``import --batch N``, ``--workers N`` (None: the tree's
    default, no flag)."""
    load = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="pdimport-"))
    db_name = ""
    try:
        if backend == "postgres":
            db_name = f"pdimport_{uuid.uuid4().hex[:12]}"
            with pg_admin(args.pg_admin_url) as conn:
                conn.execute(f'CREATE DATABASE "{db_name}"')
            database_url = pg_database_url(args.pg_admin_url, db_name)
        else:
            database_url = f"sqlite:///{workdir / 'postdesk.db'}"
        config = workdir / "postdesk.toml"
        config.write_text(CONFIG_TEMPLATE.format(
            support=SUPPORT, database_url=database_url, broker_url="stub://",
            data_dir=workdir / "data", namespace=f"pdimport-{uuid.uuid4().hex[:8]}",
            smtp_port=free_port(), desk_extra="auto_reply_limit_per_hour = 1000000"))
        env = child_env()
        exe = str(tree.postdesk)
        setup = subprocess.run([exe, "db", "upgrade", "--config", str(config)], cwd=workdir,
                               env=env, capture_output=True, text=True, timeout=300)
        if setup.returncode != 0:
            raise RuntimeError(f"postdesk db upgrade failed:\n{setup.stderr[-3000:]}")
        # The fixed cost first (same database, nothing in it yet), then the mbox.
        fixed = timed([exe, "import", "mbox", str(empty), "--notify", "--json",
                       "--config", str(config)], cwd=workdir, env=env)
        flags = [*(["--batch", str(batch)] if batch is not None else []),
                 *(["--workers", str(workers)] if workers is not None else [])]
        run = timed([exe, "import", "mbox", str(mbox), "--notify", "--json", *flags,
                     "--config", str(config)], cwd=workdir, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"postdesk import failed ({run.returncode}):\n"
                               f"{run.stderr[-3000:]}")
        summary = json.loads(run.stdout)
        outbox = outbox_counts(backend, workdir, args.pg_admin_url, db_name)
        note = "" if summary["tickets_created"] == args.emails else f"summary {summary}"
        tool = ("postdesk import --notify" + (f" --batch {batch}" if batch else "")
                + (f" --workers {workers}" if workers is not None else ""))
        return Row(tool, backend, args.emails,
                   int(summary["tickets_created"]), run.wall_s, run.cpu_s, fixed.cpu_s,
                   fixed.wall_s, outbox, load, note)
    finally:
        if db_name:
            with suppress(Exception), pg_admin(args.pg_admin_url) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        keep_or_remove(args, workdir)


def outbox_counts(backend: str, workdir: Path, pg_url: str, db_name: str) -> str:
    query = "SELECT template, status, COUNT(*) FROM outbox GROUP BY 1, 2 ORDER BY 1, 2"
    if backend == "postgres":
        import psycopg

        with psycopg.connect(pg_database_url(pg_url, db_name, "postgresql"),
                             autocommit=True) as conn:
            rows = list(conn.execute(query))
    else:
        with sqlite3.connect(workdir / "postdesk.db") as conn:
            rows = list(conn.execute(query))
    return ", ".join(f"{t}/{s} {n}" for t, s, n in rows) or "none"


# --- Roundup ---------------------------------------------------------------------------------

def ensure_roundup(venv: Path) -> Path:
    """The venv's bin directory, with roundup==ROUNDUP_VERSION installed from the index."""
    bin_dir = venv / "bin"
    python = bin_dir / "python"

    def installed() -> str:
        if not (bin_dir / "roundup-mailgw").exists():
            return ""
        proc = subprocess.run([str(python), "-c", "import roundup; print(roundup.__version__)"],
                              capture_output=True, text=True)
        return proc.stdout.strip()

    if installed() == ROUNDUP_VERSION:
        return bin_dir
    print(f"  installing roundup=={ROUNDUP_VERSION} into {venv} ...", file=sys.stderr,
          flush=True)
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
    if not python.exists():
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"roundup=={ROUNDUP_VERSION}"],
                   check=True)
    if installed() != ROUNDUP_VERSION:
        sys.exit(f"roundup {ROUNDUP_VERSION} did not install into {venv}")
    return bin_dir


CREATE_USERS = """
import sys
import roundup.instance
tracker = roundup.instance.open(sys.argv[1])
db = tracker.open("admin")
for i in range(int(sys.argv[2])):
    db.user.create(username=f"client{i}", address=f"client{i}@client.example",
                   realname=f"Client {i}", roles="User")
db.commit()
db.close()
"""


def make_tracker(bin_dir: Path, home: Path, backend: str, senders: int, mail_log: Path) -> None:
    options = ",".join([
        "tracker_web=http://localhost:8917/bench/", f"tracker_email={SUPPORT}",
        "mail_domain=desk.example", f"mail_debug={mail_log}", "nosy_messages_to_author=yes"])
    for cmd in (["install", "classic", backend, options], ["initialise", "bench-admin-pw"]):
        proc = subprocess.run([str(bin_dir / "roundup-admin"), "-i", str(home), *cmd],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"roundup-admin {cmd[0]} failed:\n{proc.stdout[-2000:]}"
                               f"{proc.stderr[-2000:]}")
    subprocess.run([str(bin_dir / "python"), "-c", CREATE_USERS, str(home), str(senders)],
                   check=True, capture_output=True, timeout=300)


COUNT_ISSUES = """
import sys
import roundup.instance
db = roundup.instance.open(sys.argv[1]).open("admin")
print(len(db.issue.list()))
db.close()
"""


def run_roundup(args: argparse.Namespace, bin_dir: Path, backend: str, mbox: Path) -> Row:
    load = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="rdimport-"))
    try:
        home = workdir / "tracker"
        mail_log = workdir / "sent-mail.log"
        make_tracker(bin_dir, home, backend, args.senders, mail_log)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUNDUP")}
        mailgw = str(bin_dir / "roundup-mailgw")
        empty = workdir / "empty.mbox"
        empty.touch()
        fixed = timed([mailgw, str(home), "mailbox", str(empty)], cwd=workdir, env=env)
        copy = workdir / "in.mbox"   # `mailbox` empties the file it read
        shutil.copyfile(mbox, copy)
        run = timed([mailgw, str(home), "mailbox", str(copy)], cwd=workdir, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"roundup-mailgw failed ({run.returncode}):\n"
                               f"{run.stdout[-2000:]}{run.stderr[-2000:]}")
        counted = subprocess.run([str(bin_dir / "python"), "-c", COUNT_ISSUES, str(home)],
                                 capture_output=True, text=True, check=True, timeout=300)
        tickets = int(counted.stdout.strip())
        sent = 0
        if mail_log.exists():
            with mail_log.open("rb") as fh:
                sent = sum(1 for line in fh if line.startswith(b"TO: "))
        errors = (run.stdout + run.stderr).strip()
        note = f"mailgw said: {errors.splitlines()[-1][:120]}" if errors else ""
        return Row("roundup-mailgw mailbox", backend, args.emails, tickets, run.wall_s,
                   run.cpu_s, fixed.cpu_s, fixed.wall_s, f"{sent} emails to authors", load,
                   note)
    finally:
        keep_or_remove(args, workdir)


def keep_or_remove(args: argparse.Namespace, workdir: Path) -> None:
    if args.keep:
        print(f"  kept {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------

def print_report(rows: list[Row], args: argparse.Namespace, mbox_bytes: int) -> None:
    print(f"\nimport of one mbox: {args.emails} new-ticket emails from {args.senders} known "
          f"senders, {mbox_bytes / args.emails:.0f} bytes each on average; "
          f"{args.repeat} round(s), interleaved")
    head = (f"{'tool':36} {'backend':8} {'tickets':>7} {'wall s':>7} {'tickets/s':>9} "
            f"{'CPU s':>7} {'CPU ms/t':>8} {'fixed CPU s':>11} {'net ms/t':>8} {'load':>5}  "
            "emails out")
    print_head(head)
    for r in rows:
        print(f"{r.tool:36} {r.backend:8} {r.tickets:>7} {r.wall_s:>7.2f} {r.rate:>9.1f} "
              f"{r.cpu_s:>7.2f} {fmt(r.cpu_ms):>8} {r.fixed_cpu_s:>11.2f} "
              f"{fmt(r.net_cpu_ms):>8} {r.load:>5.2f}  {r.emails_out}"
              f"{'  ' + r.note if r.note else ''}")
    print("  CPU = user+system of the command and its children; fixed = the same command on "
          "an empty mbox;\n  net ms/t = (CPU - fixed) per ticket; load = 1-min load average "
          "when the run started")

    def best(tool_prefix: str) -> dict[tuple[str, str], Row]:
        """The best complete run of each variant (tool, backend)."""
        out: dict[tuple[str, str], Row] = {}
        for r in rows:
            key = (r.tool, r.backend)
            if (r.tool.startswith(tool_prefix) and r.tickets == r.emails
                    and (key not in out or r.rate > out[key].rate)):
                out[key] = r
        return out

    ours, theirs = best("postdesk"), best("roundup")
    if not ours or not theirs:
        print("  (no complete run of one side: no ratio)")
        return
    peer = max(theirs.values(), key=lambda r: r.rate)
    print(f"\n  baseline: Roundup {ROUNDUP_VERSION} on {peer.backend}, best run: "
          f"{peer.rate:.1f} tickets/s, {fmt(peer.cpu_ms)} ms CPU/ticket "
          f"({fmt(peer.net_cpu_ms)} net)")
    for (tool, backend), r in sorted(ours.items()):
        rates = sorted(x.rate for x in rows if (x.tool, x.backend) == (tool, backend))
        print(f"  {tool.removeprefix('postdesk import --notify').strip() or 'postdesk'} on "
              f"{backend} (median of {len(rates)}: {statistics.median(rates):.1f} tickets/s), "
              f"best: {r.rate:.1f} tickets/s = {r.rate / peer.rate:.2f}x "
              f"Roundup's tickets/s; CPU/ticket {fmt(r.cpu_ms)} ms = "
              f"{(r.cpu_ms or 0) / (peer.cpu_ms or 1):.2f}x Roundup's "
              f"(net {fmt(r.net_cpu_ms)} ms = "
              f"{(r.net_cpu_ms or 0) / (peer.net_cpu_ms or 1):.2f}x)")
    for (_tool, backend), r in sorted(theirs.items()):
        if r is not peer:
            print(f"  (Roundup on {backend}: {r.rate:.1f} tickets/s, {fmt(r.cpu_ms)} ms "
                  "CPU/ticket)")


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="postdesk import --notify vs roundup-mailgw "
                                "(see the module docstring).")
    p.add_argument("--tree", type=Path, default=DEFAULT_TREE,
                   help="checkout to measure (default: the repository holding this script)")
    p.add_argument("--emails", type=int, default=1000, help="emails in the mbox")
    p.add_argument("--senders", type=int, default=50, help="distinct known client addresses")
    p.add_argument("--size", type=int, default=2048, help="approximate bytes per email")
    p.add_argument("--repeat", type=int, default=2, help="rounds (best run of each is used)")
    p.add_argument("--postdesk-backends", default="sqlite",
                   help="comma list of sqlite, postgres")
    p.add_argument("--postdesk-batches", default="",
                   help="comma list of `import --batch N` sizes to run as variants (default: "
                        "the tree's default, without the flag)")
    p.add_argument("--postdesk-workers", default="",
                   help="comma list of `import --workers N` to run as variants (default: "
                        "the tree's default, without the flag)")
    p.add_argument("--roundup-backends", default="sqlite",
                   help="comma list of Roundup backends (sqlite, anydbm)")
    p.add_argument("--roundup-venv", type=Path, default=DEFAULT_TREE / "build" / "roundup-venv")
    p.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN)
    p.add_argument("--keep", action="store_true", help="keep the temp dirs")
    p.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tree = Tree(args.tree.resolve())
    reexec_in_tree(tree)
    postdesk_backends = [b.strip() for b in args.postdesk_backends.split(",") if b.strip()]
    roundup_backends = [b.strip() for b in args.roundup_backends.split(",") if b.strip()]
    batches: list[int | None] = [int(b) for b in args.postdesk_batches.split(",")
                                 if b.strip()] or [None]
    workers: list[int | None] = [int(w) for w in args.postdesk_workers.split(",")
                                 if w.strip()] or [None]
    if "postgres" in postdesk_backends:
        require_loopback(args.pg_admin_url, "--pg-admin-url")
    bin_dir = ensure_roundup(args.roundup_venv.resolve())
    tree.precompile()
    print(f"postdesk import vs roundup-mailgw - tree {tree.describe()}")
    print(f"{python_line()}, {datetime.now(UTC).isoformat(timespec='seconds')}, "
          f"load average {load_average()}")
    data = Path(tempfile.mkdtemp(prefix="pdpeers-"))
    rows: list[Row] = []
    try:
        mbox = data / "tickets.mbox"
        mbox_bytes = write_mbox(mbox, args.emails, args.senders, args.size,
                                uuid.uuid4().hex[:6])
        empty = data / "empty.mbox"
        empty.touch()
        for round_ in range(args.repeat):
            for backend in postdesk_backends:
                for batch in batches:
                    for helpers in workers:
                        what = (f"postdesk{f' --batch {batch}' if batch else ''}"
                                f"{f' --workers {helpers}' if helpers is not None else ''}"
                                f" on {backend}")
                        print(f"  round {round_ + 1}: {what} ...", file=sys.stderr,
                              flush=True)
                        try:
                            rows.append(run_postdesk(args, tree, backend, mbox, empty, batch,
                                                     helpers))
                        except Exception as exc:
                            print(f"  {what} failed: {exc}", file=sys.stderr)
            for backend in roundup_backends:
                print(f"  round {round_ + 1}: roundup on {backend} ...", file=sys.stderr,
                      flush=True)
                try:
                    rows.append(run_roundup(args, bin_dir, backend, mbox))
                except Exception as exc:
                    print(f"  roundup on {backend} failed: {exc}", file=sys.stderr)
        print_report(rows, args, mbox_bytes)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(
            [asdict(r) | {"rate": r.rate, "cpu_ms": r.cpu_ms, "net_cpu_ms": r.net_cpu_ms}
             for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
