"""SMTP accept throughput and latency: postdesk's SMTP door against a do-nothing aiosmtpd.

Run with the tree's own interpreter (loopback only; a few minutes at most)::

    .venv/bin/python bench/bench_accept.py
    .venv/bin/python bench/bench_accept.py --messages 2000 --max-seconds 20 --conns 1,4
    .venv/bin/python bench/bench_accept.py --servers null,smtp-sqlite   # no PostgreSQL
    .venv/bin/python bench/bench_accept.py --conns 1 --servers null,serve-sqlite --rounds 5

What is measured, each in its own server process started by this script:

* ``null``: the baseline, a do-nothing aiosmtpd handler (``handle_DATA`` answers 250 at
  once) with the same ``data_size_limit``: the ceiling of one Python SMTP process here;
* ``smtp-sqlite``: ``postdesk smtp`` on the embedded default (SQLite in WAL mode), with
  ``broker_url = "stub://"``, so the accepted emails are committed and nothing processes
  them (with a stub queue ``postdesk smtp`` enqueues nothing: nobody in its process would
  consume the jobs);
* ``smtp-postgres``: the same on PostgreSQL (``--pg-admin-url``, default
  ``postgresql://postgres@127.0.0.1:5432/postgres``; a private database is created for the
  run and dropped afterwards);
* ``serve-sqlite``: the embedded ``postdesk serve``: SMTP plus the workers processing every
  email (ticket, acknowledgement, staff notification) on the same database (the door in a
  process of its own, the workers in the desk process);
* ``serve-postgres``: the same on PostgreSQL (still the in-process ``stub://`` queue).

Every server row is measured with 1 and with 4 concurrent smtplib connections (``--conns``),
``--messages`` emails of about 2 KB each (every one different, so none is a duplicate), split
evenly over the connections, each connection stopping early after ``--max-seconds``. The first
``--warmup`` emails of each server are sent before measuring. messages/s = emails answered
250 / wall time from the first MAIL FROM to the last 250. Latency = end of DATA (the last byte
of ``<CRLF>.<CRLF>`` handed to the socket) to the 250 reply being read: p50/p99 nearest rank.
"usr"/"sys" = user and system CPU time of the server process over the measurement
(``/proc/PID/stat``; for ``serve-*`` the desk process, not its door process) per email
(fsync, mkdir and the other file system calls are system time). "ratio" = messages/s over
the do-nothing baseline's with the same number of connections, measured in the same run.
``--rounds N`` measures every server N times, the do-nothing one first in each round: each
row's ratio is to its own round's baseline, and a summary gives each server's median ratio,
from six rounds on with the range it lies in at 95 % confidence (the do-nothing server
alone went from 1,700 to 3,000 msg/s between runs minutes apart on a shared machine).

Before the servers, the "durability floor" is measured on the same disk: the median time to
publish a 2 KB blob the way a 250 must wait for (temporary file fsynced, renamed, directory
fsynced; plus a new directory made durable, as for most blobs of a young store). It bounds
what one connection can reach: the do-nothing server's time per email plus the floor.

For ``serve-sqlite`` rows the script then reads the server's database: how many of the accepted
emails were processed by the end of the burst, and how long until none is pending
(``--drain-seconds``); each burst starts with nothing pending.

Prints one table; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    DEFAULT_PG_ADMIN,
    SUPPORT,
    child_env,
    database_url,
    describe_tree,
    desk_config,
    free_port,
    load_average,
    pct,
    print_head,
    python_line,
    require_loopback,
    rounds_summary,
    stop_process,
    wait_for_port,
)

SCRIPT = Path(__file__).resolve()
TREE = SCRIPT.parent.parent
POSTDESK = Path(sys.executable).with_name("postdesk")
MAX_MESSAGE_BYTES = 26214400
SERVERS = ("null", "smtp-sqlite", "smtp-postgres", "serve-sqlite", "serve-postgres")

# --- helpers ------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def wire(raw: bytes) -> bytes:
    """The DATA bytes as sent: CRLF line ends, dot-stuffed, with the final <CRLF>.<CRLF>."""
    data = re.sub(rb"\r?\n", b"\r\n", raw)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def make_email(tag: str, i: int) -> bytes:
    """About 2 KB: a client's plain-text email, unique per (tag, i)."""
    body = "".join(
        f"Line {n} of report {i}: the printer on floor {n % 7} shows PC LOAD LETTER again.\n"
        for n in range(22))
    text = (
        f"From: Client {i % 50} <client{i % 50}@client.example>\n"
        f"To: {SUPPORT}\n"
        f"Subject: Bench {tag} {i}: printer trouble\n"
        f"Message-ID: <bench-{tag}-{i}@client.example>\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n\n"
        f"Hello,\n\n{body}\nThanks,\nClient\n")
    return text.replace("\n", "\r\n").encode()


# --- the do-nothing baseline server (child process) ----------------------------------------

class NullHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"


def run_null_server(port: int) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(NullHandler(), hostname="127.0.0.1", port=port,
                            data_size_limit=MAX_MESSAGE_BYTES, server_hostname="null",
                            ready_timeout=10)
    controller.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    controller.stop()


# --- the client ----------------------------------------------------------------------------

@dataclass
class ConnResult:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last: float = 0.0


@dataclass
class Measurement:
    server: str
    conns: int
    sent: int
    seconds: float
    latencies: list[float]
    user_s: float
    sys_s: float
    errors: list[str]
    round: int = 0        # which of the ``--rounds`` this measurement belongs to

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def measure(server: str, port: int, pid: int, conns: int, messages: list[bytes],
            max_seconds: float) -> Measurement:
    share = [messages[i::conns] for i in range(conns)]
    results = [ConnResult() for _ in range(conns)]
    start = threading.Barrier(conns + 1)
    # The deadline is set once every connection is open (below); until then it is far away.
    deadline = [time.perf_counter() + 3600.0]
    threads = [threading.Thread(target=_run_conn, args=(port, share[i], deadline, start,
                                                        results[i]), daemon=True)
               for i in range(conns)]
    for thread in threads:
        thread.start()
    cpu0 = cpu_seconds(pid)
    with suppress(threading.BrokenBarrierError):
        start.wait(timeout=60)
    t0 = time.perf_counter()
    deadline[0] = t0 + max_seconds
    for thread in threads:
        thread.join()
    cpu1 = cpu_seconds(pid)
    latencies = [v for r in results for v in r.latencies]
    last = max((r.last for r in results), default=t0)
    return Measurement(server, conns, len(latencies), max(last - t0, 1e-9), latencies,
                       cpu1[0] - cpu0[0], cpu1[1] - cpu0[1],
                       [e for r in results for e in r.errors])


def _run_conn(port: int, messages: list[bytes], deadline: list[float],
              start: threading.Barrier, out: ConnResult) -> None:
    """One connection: open it, wait for the others, send until done or past the deadline
    (a one-element list, set by ``measure`` once every connection is open)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.ehlo("bench.example")
            start.wait(timeout=60)
            for raw in messages:
                if time.perf_counter() > deadline[0]:
                    break
                _one(client, raw, out)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
        out.errors.append(f"{type(exc).__name__}: {exc}")
        with suppress(threading.BrokenBarrierError):
            start.abort()


def _one(client: smtplib.SMTP, raw: bytes, out: ConnResult) -> None:
    code, resp = client.mail("client@client.example")
    if code != 250:
        out.errors.append(f"MAIL {code} {resp!r}")
        return
    code, resp = client.rcpt(SUPPORT)
    if code != 250:
        out.errors.append(f"RCPT {code} {resp!r}")
        client.rset()
        return
    code, resp = client.docmd("DATA")
    if code != 354:
        out.errors.append(f"DATA {code} {resp!r}")
        client.rset()
        return
    client.send(wire(raw))
    t0 = time.perf_counter()
    code, resp = client.getreply()
    t1 = time.perf_counter()
    if code == 250:
        out.latencies.append(t1 - t0)
        out.last = t1
    else:
        out.errors.append(f"end of DATA {code} {resp!r}")


# --- servers -------------------------------------------------------------------------------

@contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    import psycopg

    require_loopback(admin_url, "--pg-admin-url")
    name = f"pdbench_accept_{uuid.uuid4().hex[:10]}"
    admin = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(admin, name)
    finally:
        with suppress(Exception), psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def server_process(kind: str, workdir: Path, pg_admin: str) -> Iterator[tuple[int, int]]:
    """Start one server; yield (port, pid)."""
    port = free_port()
    log = workdir / f"{kind}.log"
    with log.open("w") as log_fh, contextlib_database(kind, pg_admin) as database_url:
        wrap = ""
        if kind == "null":
            argv = [sys.executable, str(SCRIPT), "--null-server", str(port)]
        else:
            config = workdir / f"{kind}.toml"
            config.write_text(desk_config(
                database_url=database_url or f"sqlite:///{workdir / (kind + '.db')}",
                data_dir=workdir / f"{kind}-data", port=port, max_bytes=MAX_MESSAGE_BYTES))
            subprocess.run([str(POSTDESK), "db", "upgrade", "--config", str(config)],
                           check=True, capture_output=True, env=child_env(), cwd=workdir,
                           timeout=300)
            command = "serve" if kind.startswith("serve") else "smtp"
            # PDBENCH_SERVER_PREFIX: a command the server runs under, "{name}" replaced by
            # the server's kind, e.g. "py-spy record -r 200 -f raw -o /tmp/{name}.txt --"
            # (the figures of such a run are the profiler's, not the desk's).
            wrap = os.environ.get("PDBENCH_SERVER_PREFIX", "").replace("{name}", kind)
            argv = [*wrap.split(), str(POSTDESK), command, "--config", str(config)]
        proc = subprocess.Popen(argv, stdout=log_fh, stderr=log_fh, env=child_env(),
                                cwd=workdir)
        try:
            wait_for_port(port, proc, log)
            yield port, proc.pid
        finally:
            stop_process(proc, grace=20, wrapped=bool(wrap))


@contextmanager
def contextlib_database(kind: str, pg_admin: str) -> Iterator[str | None]:
    if kind.endswith("postgres"):
        with pg_database(pg_admin) as url:
            yield url
    else:
        yield None


# --- serve: is the mail processed? -------------------------------------------------------

def raw_statuses(db: Path) -> dict[str, int]:
    """Raw messages by status in a server's SQLite database (read-only, WAL: no lock)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute("SELECT status, count(*) FROM raw_messages GROUP BY status"))
    finally:
        conn.close()


def drain(db: Path, max_seconds: float) -> tuple[dict[str, int], float | None]:
    """After a burst: the statuses as it ended, and the seconds until none is pending
    (None: still some after ``max_seconds``). ``serve`` exists to process what it accepts."""
    at_end = raw_statuses(db)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_seconds:
        if not raw_statuses(db).get("pending"):
            return at_end, time.perf_counter() - t0
        time.sleep(0.5)
    return at_end, None


# --- the durability floor ------------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durability_floor(root: Path, n: int = 300) -> tuple[float, float, float]:
    """Median ms to make 2 KB durable the ways the door can: a synced SQLite commit of one
    row holding it (WAL, synchronous=FULL: how an email up to ``raw_in_database_bytes`` is
    accepted), and published as a blob store must (temporary file written and fsynced,
    renamed, its directory fsynced) into an existing directory and into a new one (made
    and fsynced in its parent too), as most blobs of a young store are."""
    data = os.urandom(2000)
    db = sqlite3.connect(root / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
    old = root / "floor-old"
    old.mkdir()
    fsync_dir(root)
    timings: tuple[list[float], list[float], list[float]] = ([], [], [])
    for i in range(n):
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (data) VALUES (?)", (data,))
        db.execute("COMMIT")
        timings[0].append(time.perf_counter() - t0)
        for new, out in ((False, timings[1]), (True, timings[2])):
            t0 = time.perf_counter()
            directory = old
            if new:
                directory = root / f"floor-new-{i}"
                directory.mkdir()
            tmp = directory / f".tmp-{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, directory / f"blob-{i}")
            if new:
                fsync_dir(root)
            fsync_dir(directory)
            out.append(time.perf_counter() - t0)
    db.close()
    row, old_dir, new_dir = (pct(t, 50) * 1000 for t in timings)
    return row, old_dir, new_dir


def print_round_ratios(results: list[Measurement], baselines: dict[tuple[int, int], float]
                       ) -> None:
    """Per server and connections: the median over the rounds of msg/s over that round's
    do-nothing server's. The baseline alone moved by half between runs minutes apart on
    a shared machine; a server measured in the same round as its baseline moves less."""
    ratios: dict[tuple[str, int], list[float]] = {}
    for m in results:
        base = baselines.get((m.round, m.conns))
        if m.server != "null" and base:
            ratios.setdefault((m.server, m.conns), []).append(m.rate / base)
    for (server, conns), values in ratios.items():
        print(f"{server} {conns} conn(s): ratio {rounds_summary(values, digits=3)}")


# --- main ----------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=1000,
                        help="emails per measurement (split over the connections)")
    parser.add_argument("--max-seconds", type=float, default=15.0,
                        help="each measurement stops sending after this long")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--conns", default="1,4")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN)
    parser.add_argument("--drain-seconds", type=float, default=300.0,
                        help="serve-sqlite: after each burst, wait this long at most for every "
                             "accepted email to be processed (0: do not wait)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every server this many times, the do-nothing one first "
                             "in each round; each row's ratio is to its own round's baseline, "
                             "and a summary gives the median ratio per server")
    parser.add_argument("--null-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.null_server:
        run_null_server(args.null_server)
        return 0

    conns_list = [int(c) for c in args.conns.split(",") if c]
    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {SERVERS}")
    if "null" not in servers:
        servers.insert(0, "null")
    if not POSTDESK.exists():
        sys.exit(f"{POSTDESK} not found: run this script with the tree's .venv/bin/python")

    print(f"postdesk SMTP accept - tree {describe_tree(TREE)}")
    print(f"{python_line()}, load average {load_average()} at start; "
          f"{args.messages} emails (~{len(make_email('x', 0))} bytes) per measurement, "
          f"at most {args.max_seconds:g} s each")
    results: list[Measurement] = []
    workdir = Path(tempfile.mkdtemp(prefix="pdbench-accept-"))
    floor: tuple[float, float, float] | None = None
    drains: list[tuple[str, int, dict[str, int], float | None]] = []
    try:
        floor = durability_floor(workdir)
        for round_, kind in ((r, k) for r in range(args.rounds) for k in servers):
            print(f"  {kind} ...", file=sys.stderr, flush=True)
            try:
                with server_process(kind, workdir, args.pg_admin_url) as (port, pid):
                    warm = [make_email(f"{kind}-warm", i) for i in range(args.warmup)]
                    measure(kind, port, pid, 1, warm, 60)
                    if kind == "serve-sqlite" and args.drain_seconds > 0:
                        drain(workdir / f"{kind}.db", args.drain_seconds)
                    for conns in conns_list:
                        tag = f"{kind}-{conns}-{uuid.uuid4().hex[:6]}"
                        batch = [make_email(tag, i) for i in range(args.messages)]
                        results.append(dataclasses.replace(
                            measure(kind, port, pid, conns, batch, args.max_seconds),
                            round=round_))
                        if kind == "serve-sqlite" and args.drain_seconds > 0:
                            at_end, took = drain(workdir / f"{kind}.db", args.drain_seconds)
                            drains.append((kind, conns, at_end, took))
            except Exception as exc:  # noqa: BLE001 - one server failing keeps the others
                print(f"  {kind} failed: {exc}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    baselines = {(m.round, m.conns): m.rate for m in results if m.server == "null"}
    round_col = args.rounds > 1
    head = ((f"{'round':>5} " if round_col else "")
            + f"{'server':<15}{'conns':>6}{'emails':>8}{'msg/s':>9}{'ratio':>8}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'usr ms':>8}{'sys ms':>8}  errors")
    print()
    print_head(head)
    for m in results:
        base = baselines.get((m.round, m.conns))
        ratio = f"{m.rate / base:.3f}" if base else "-"
        usr = f"{m.user_s / m.sent * 1000:.2f}" if m.sent else "-"
        sys_ = f"{m.sys_s / m.sent * 1000:.2f}" if m.sent else "-"
        errors = f"{len(m.errors)} (first: {m.errors[0][:60]})" if m.errors else "0"
        print((f"{m.round + 1:>5} " if round_col else "")
              + f"{m.server:<15}{m.conns:>6}{m.sent:>8}{m.rate:>9.0f}{ratio:>8}"
              f"{pct(m.latencies, 50) * 1000:>9.2f}{pct(m.latencies, 99) * 1000:>9.2f}"
              f"{usr:>8}{sys_:>8}  {errors}")
    if floor is not None and baselines.get((0, 1)):
        null_ms = 1000 / baselines[(0, 1)]
        row_ms, old_ms, new_ms = floor
        print(f"durability floor (median, this disk, measured before the servers): "
              f"{row_ms:.2f} ms for a synced SQLite commit of a 2 KB row (how an email up to "
              f"raw_in_database_bytes is accepted: one connection can reach at most "
              f"~{null_ms / (null_ms + row_ms):.2f}x the do-nothing server while a 250 waits "
              f"for it); a 2 KB blob file: {old_ms:.2f} ms into an existing directory, "
              f"{new_ms:.2f} ms into a new one (at most ~{null_ms / (null_ms + new_ms):.2f}x); "
              f"{null_ms:.2f} ms per email for the do-nothing server")
    for kind, conns, at_end, took in drains:
        total = sum(at_end.values())
        after = f"{took:.1f} s later" if took is not None else "not within --drain-seconds"
        print(f"{kind} {conns} conn(s): at the end of the burst {at_end.get('processed', 0)} of "
              f"{total} raw messages processed so far ({at_end.get('pending', 0)} pending); "
              f"none pending {after} (these include the warm-up and earlier bursts)")
    if args.rounds > 1:
        print_round_ratios(results, baselines)
    print(f"load average at end: {load_average()}")
    print("ratio: msg/s over the do-nothing aiosmtpd's with as many connections, this run. "
          "Latency: end of DATA -> 250. usr/sys: the server process's CPU time per email.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
