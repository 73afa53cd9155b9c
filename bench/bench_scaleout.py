"""Scale-out end to end on PostgreSQL + Redis: emails/s with k ``postdesk worker`` processes
(one sender and five), and the SMTP -> acknowledgement latency at a sustained rate.

Run (from any directory, with any python3; the script re-executes itself with the measured
tree's own ``.venv/bin/python``)::

    python3 bench/bench_scaleout.py                               # both parts, defaults
    python3 bench/bench_scaleout.py --emails 400 --workers 1,2,4 --senders 1,5 --repeat 2
    python3 bench/bench_scaleout.py --skip-throughput --rate 50 --duration 60
    python3 bench/bench_scaleout.py --skip-latency --worker-threads 2

PostgreSQL (admin URL ``--pg-admin-url``, default ``$POSTDESK_TEST_POSTGRES_URL`` or
``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth) and Redis (``--redis-url``,
default ``redis://127.0.0.1:6379/0``) must run on this machine: loopback addresses only.
Every run creates and drops its own database and uses its own Redis queue namespace, whose
keys it deletes afterwards. The config, the desk and the emails are those of
``bench_pipeline_locks.py`` (whose helpers this script uses): client senders
``clientN@client.example`` of one org, each email with its own subject so each opens a
ticket, flood and automatic-mail limits far above the volume, no ``[smtp_out]`` (the
workers "send" to the local maildir ``data_dir/outbox``), the desk's own ``worker_prefetch``
(32) unless ``--prefetch`` says otherwise.

Part 1 - throughput. ``--emails`` emails are accepted through ``postdesk smtp`` (with
``broker_url = "stub://"``, so nothing is processed yet) and smtplib; then k ``postdesk
worker`` processes (``--worker-threads`` threads each, 1 by default, so k is the number of
emails in progress at once) are started and allowed to finish starting; then a child
process enqueues every pending raw id through the tree's ``App.enqueue_inbound`` (t0 = the
first enqueue). Polled with SQL every 50 ms:

* processed: no raw message ``pending`` and an acknowledgement row for every ticket;
* acks sent: processed, and every acknowledgement ``sent`` (written to the maildir);
* all sent: acks sent, and no outbox row ``draft``/``queued``/``sending`` (the staff
  notifications too).

emails/s = N / (acks sent - t0). Each variant (k x senders) runs ``--repeat`` times,
interleaved (odd rounds run the k values in reverse order); the summary takes each
variant's best run (other load only slows a run) and gives k2/k1 and k4/k1; with two or more
rounds it also gives each round's own ratio (the round's runs follow one another, so a shared
machine's drift over minutes moves it less) and their median; from six rounds on, the range
the median lies in with at least 95 % confidence (``benchlib.median_interval``): a target
holds reliably on this machine when that range's low end clears it (BENCHMARKS.md,
nineteenth pass, on what k2/k1 rewards). "worker CPU ms/email" is the user+system time of
the k worker processes (from /proc, read just before they are stopped) per email; "pg
ms/email" and "redis ms" the same for the desk database's PostgreSQL backends and the Redis
server over the same span.
"runq ms/email" is the time the workers' threads and the desk database's backends spent
runnable but waiting for a CPU (the kernel's schedstat), per email, over the same span;
"idle" the share of the machine's CPU time left idle (with iowait) from the first email
taken to the end. On two cores they show what keeps k=2 from twice k=1 when no lock is
waited for: each email's chain of worker and backend waits its turn for a CPU at every
round trip, while some CPU time still goes unused.
"lock-wait" is the mean number of the run's database sessions waiting on a lock
(``pg_stat_activity``), sampled while emails are processed.
With two or more k values, each round starts by measuring the machine itself
(``benchlib.two_process_scaling``): a CPU-bound Python loop alone, then two copies side by
side, then alone again; 2 x the time alone / the slower copy's time is what two busy
processes get out of the machine against one, 2.0 on two cores of their own. Where the two
virtual cores share a physical one, or the host is busy, it is less. It is a reference for
k2/k1 measured in the same minutes, not a bound: a one-thread worker at k=1 leaves the
machine about half idle while it waits on its database, so k=2 can gain more than two
CPU-bound processes would. Printed per round beside the paired ratios.

``--prefetch N`` sets part 1's ``desk.worker_prefetch`` (0, the default: the desk's own,
32). Passes before the fourteenth used 2, so that the last emails would not wait in one
worker's prefetch while another idled; but Dramatiq's Redis consumer, once it holds that
many, sleeps with a growing backoff (5-10 ms, then 10-20, ...) until one is acknowledged,
and a one-thread worker can finish both in that time and wait: py-spy found the worker
thread idle 13-16 % of a k=2 run. In five interleaved rounds, k2/k1 was 1.52x (median)
with 2, 1.63x with 8 and 1.69x with 32 (BENCHMARKS.md, fourteenth pass).

Part 2 - latency at a sustained rate. ``--latency-workers`` (2) workers and ``postdesk
smtp`` with the Redis broker (so accepting an email enqueues it) run together, with the
desk's own ``worker_prefetch`` (32; ``--latency-prefetch N`` sets another: part 1's 2 makes
Dramatiq's Redis consumer sleep with a growing backoff, up to the worker timeout, whenever
its two messages are in progress, even with more waiting). After
``--warmup`` emails (not counted, waited for until acknowledged), emails are sent at a
fixed rate (``--rate`` per second for ``--duration`` seconds) from ``--senders-latency``
senders: email i is due at t0 + i / rate; ``--connections`` smtplib connections take the
due emails in turn, so an email that waits for a free connection waits on the clock
(latencies are measured from the due time: no coordinated omission). For each email:

* 250: due -> the SMTP server's 250 for its DATA;
* ack in outbox: due -> its acknowledgement seen rendered and committed in the outbox
  (status no longer ``draft``), by a poller querying every ``--poll-ms`` ms (so up to that
  much late);
* ack sent: due -> the acknowledgement's ``sent_at`` (the worker's clock, same machine).

And the CPU each group of processes used while the emails were sent (workers, the SMTP
door, the desk database's PostgreSQL backends, the Redis server, this script), in % of one
core. p50/p95/p99/max over the measured emails; an email whose acknowledgement never came within
``--drain`` seconds after the last send is counted as missing (and as infinitely late for
the percentiles). Bounded in time, loopback only, asserts nothing; prints tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import resource
import smtplib
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline_locks import (  # noqa: E402
    DEFAULT_REDIS,
    Desk,
    child_enqueue,
    emails_for,
    make_email,
    private_desk,
    wait_for_workers,
)
from benchlib import (  # noqa: E402
    DEFAULT_PG_ADMIN,
    SUPPORT,
    Tree,
    child_env,
    fmt,
    load_average,
    pct,
    print_head,
    python_line,
    require_loopback,
    rounds_summary,
    stop_process,
    two_process_scaling,
    wait_for_port,
)
from benchlib import reexec_in_tree as _reexec_in_tree  # noqa: E402

SCRIPT = Path(__file__).resolve()
DEFAULT_TREE = SCRIPT.parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def reexec_in_tree(tree: Tree) -> None:
    """Run with the tree's own interpreter: re-execute THIS script there."""
    _reexec_in_tree(tree, SCRIPT)


# === processes ================================================================================

def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def runq_wait_s(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU: the second
    field of each /proc/<pid>/task/<tid>/schedstat (0 where the kernel keeps no
    schedstats). A thread that has exited takes its share with it, so read it while the
    process runs."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def idle_ticks() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


POSTGRES = "postgres (the desk's backends)"
REDIS = "redis-server"


def service_pids(desk: Desk) -> dict[str, list[int]]:
    """The desk database's PostgreSQL backends and the Redis server's processes."""
    return {
        POSTGRES: [int(pid) for (pid,) in desk.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")],
        REDIS: [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and _comm(p) == "redis-server"],
    }


def cpu_by_process(desk: Desk, procs: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each group of processes: the named ones (workers, the SMTP
    door), the desk database's PostgreSQL backends, the Redis server, and this script
    (its pacer and poller threads)."""
    groups = {name: sum(proc_cpu_s(pid) for pid in pids)
              for name, pids in {**procs, **service_pids(desk)}.items()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    groups["this script (pacer, poller)"] = usage.ru_utime + usage.ru_stime
    return groups


# (CPU seconds, run-queue wait seconds) of a process or a group so far
Usage = tuple[float, float]


def proc_usage(pid: int) -> Usage:
    return proc_cpu_s(pid), runq_wait_s(pid)


def total_usage(pids: Iterable[int]) -> Usage:
    readings = [proc_usage(pid) for pid in pids]
    return sum(r[0] for r in readings), sum(r[1] for r in readings)


def service_usage(desk: Desk) -> dict[tuple[str, int], Usage]:
    """CPU and run-queue wait so far of each PostgreSQL backend and Redis process, by
    (group, pid): the processes are looked up once for both."""
    return {(name, pid): proc_usage(pid)
            for name, pids in service_pids(desk).items() for pid in pids}


def usage_since(now: dict[tuple[str, int], Usage], before: dict[tuple[str, int], Usage]
                ) -> dict[str, Usage]:
    """CPU and run-queue wait of each group since ``before``; a process started since
    counts from zero (its start-up is the run's cost)."""
    spent: dict[str, Usage] = {POSTGRES: (0.0, 0.0), REDIS: (0.0, 0.0)}
    for (name, pid), (cpu, runq) in now.items():
        cpu_before, runq_before = before.get((name, pid), (0.0, 0.0))
        cpu_so_far, runq_so_far = spent[name]
        spent[name] = (cpu_so_far + cpu - cpu_before, runq_so_far + runq - runq_before)
    return spent


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


WORKER_PREFIX = os.environ.get("PDBENCH_WORKER_PREFIX", "")


def stop_worker(proc: subprocess.Popen[Any]) -> None:
    stop_process(proc, wrapped=bool(WORKER_PREFIX))


def start_workers(desk: Desk, tree: Tree, k: int, tag: str
                  ) -> tuple[list[subprocess.Popen[Any]], list[Path]]:
    procs: list[subprocess.Popen[Any]] = []
    logs: list[Path] = []
    # PDBENCH_WORKER_PREFIX: a command each worker runs under, "{name}" replaced by the
    # worker's name, e.g. "py-spy record -r 200 -f raw -o /tmp/{name}.txt --" to see where a
    # worker's CPU goes (the figures of such a run are the profiler's, not the desk's).
    prefix = WORKER_PREFIX
    for i in range(k):
        logs.append(desk.workdir / f"worker-{tag}-{i}.log")
        wrap = prefix.replace("{name}", f"worker-{tag}-{i}").split()
        with logs[-1].open("w") as fh:
            procs.append(subprocess.Popen(
                [*wrap, str(tree.postdesk), "worker", "--config", str(desk.config)],
                stdout=fh, stderr=fh, env=child_env(), cwd=desk.workdir))
    try:
        wait_for_workers(desk, procs, logs)
    except BaseException:
        for proc in procs:
            stop_worker(proc)
        raise
    return procs, logs


def start_smtp(desk: Desk, tree: Tree, config: Path) -> subprocess.Popen[Any]:
    log = (desk.workdir / "smtp-live.log").open("w")
    proc = subprocess.Popen([str(tree.postdesk), "smtp", "--config", str(config)],
                            stdout=log, stderr=log, env=child_env(), cwd=desk.workdir)
    log.close()
    try:
        wait_for_port(desk.smtp_port, proc, desk.workdir / "smtp-live.log",
                      what="postdesk smtp", interval=0.1)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def pg_connect(desk: Desk) -> Any:
    import psycopg

    return psycopg.connect(desk.pg_conninfo(), autocommit=True)


# === part 1: throughput =======================================================================

@dataclass
class Run:
    senders: int
    workers: int
    threads: int
    emails: int
    feed_s: float
    processed_s: float | None
    acked_s: float | None
    all_sent_s: float | None
    worker_cpu_s: float
    statuses: str
    load: float
    lock_waiters: float | None
    note: str = ""
    # CPU seconds of the desk database's PostgreSQL backends and of the Redis server over
    # the same span as worker_cpu_s: what one email costs the machine besides the workers
    postgres_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    enqueue_s: float = 0.0      # first to last enqueue (the enqueuing child competes for CPU)
    round: int = 0              # which of the interleaved repeats this run belongs to
    # Seconds the workers' threads and the desk database's backends spent runnable but
    # waiting for a CPU, over the same span as worker_cpu_s, and the share of the
    # machine's CPU time left idle then: on two cores, what keeps k=2 from 2x k=1.
    worker_runq_s: float = 0.0
    postgres_runq_s: float = 0.0
    idle_share: float | None = None

    @property
    def rate(self) -> float | None:
        return self.emails / self.acked_s if self.acked_s else None

    @property
    def cpu_ms(self) -> float | None:
        return self.worker_cpu_s * 1000 / self.emails if self.acked_s else None


POLL_SQL = """
SELECT (SELECT COUNT(*) FROM raw_messages WHERE status = 'pending'),
       (SELECT COUNT(*) FROM tickets),
       (SELECT COUNT(*) FROM outbox WHERE template = 'acknowledgement'),
       (SELECT COUNT(*) FROM outbox WHERE template = 'acknowledgement' AND status = 'sent'),
       (SELECT COUNT(*) FROM outbox WHERE status IN ('draft', 'queued', 'sending')),
       (SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()
          AND wait_event_type = 'Lock')
"""


def measure_throughput(args: argparse.Namespace, tree: Tree, senders: int, k: int) -> Run:
    load = os.getloadavg()[0]
    with private_desk(args, tree, "postgres", args.redis_url, args.prefetch or None) as desk:
        tag = uuid.uuid4().hex[:6]
        feed_s = desk.feed(emails_for(args.emails, senders, tag))
        procs, _logs = start_workers(desk, tree, k, "tp")
        processed = acked = all_sent = None
        waiters: list[int] = []
        workers_before = total_usage(p.pid for p in procs)
        services_before = service_usage(desk)
        # the machine's idle share counts from the first email taken, not from the
        # enqueuing child's start-up, when the workers have nothing to do yet
        idle_before: tuple[int, int] | None = None
        cpu = runq = 0.0
        services: dict[str, Usage] = {POSTGRES: (0.0, 0.0), REDIS: (0.0, 0.0)}
        idle_share: float | None = None
        try:
            enqueuer = subprocess.Popen(
                [str(tree.python), str(SCRIPT), "--tree", str(tree.path), "--_child",
                 "enqueue", "--_config", str(desk.config)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
            deadline = time.time() + args.timeout
            with pg_connect(desk) as conn:
                while time.time() < deadline and all_sent is None:
                    now = time.time()
                    row = conn.execute(POLL_SQL).fetchone()
                    assert row is not None
                    pending, tickets, acks, acks_sent, unsent, waiting = row
                    if processed is None and pending < args.emails:
                        waiters.append(waiting)
                        if idle_before is None:
                            idle_before = idle_ticks()
                    if processed is None and pending == 0 and tickets and acks >= tickets:
                        processed = now
                    if processed is not None and acked is None and acks_sent >= tickets:
                        acked = now
                    if acked is not None and unsent == 0:
                        all_sent = now
                    time.sleep(0.05)
            workers_now = total_usage(p.pid for p in procs)
            cpu = workers_now[0] - workers_before[0]
            runq = workers_now[1] - workers_before[1]
            services = usage_since(service_usage(desk), services_before)
            idle_after = idle_ticks()
            if idle_before is not None and idle_after[1] > idle_before[1]:
                idle_share = ((idle_after[0] - idle_before[0])
                              / (idle_after[1] - idle_before[1]))
            out, err = enqueuer.communicate(timeout=120)
            if enqueuer.returncode != 0:
                raise RuntimeError(f"enqueue child failed:\n{err[-3000:]}")
            enqueued = json.loads(out.strip().splitlines()[-1])
            t0 = float(enqueued["t0"])
        finally:
            for proc in procs:
                stop_worker(proc)
        statuses = ", ".join(f"{s}{'/' + why if why else ''} {n}" for s, why, n in desk.query(
            "SELECT status, COALESCE(reason, ''), COUNT(*) FROM raw_messages GROUP BY 1, 2 "
            "ORDER BY 1, 2"))

        def since(t: float | None) -> float | None:
            return t - t0 if t is not None else None

        return Run(senders, k, args.worker_threads, args.emails, feed_s, since(processed),
                   since(acked), since(all_sent), cpu, statuses, load,
                   statistics.mean(waiters) if waiters else None,
                   "" if acked else f"not done after {args.timeout:.0f}s",
                   postgres_cpu_s=services[POSTGRES][0], redis_cpu_s=services[REDIS][0],
                   enqueue_s=float(enqueued["t1"]) - t0, worker_runq_s=runq,
                   postgres_runq_s=services[POSTGRES][1], idle_share=idle_share)


def print_throughput(runs: list[Run], args: argparse.Namespace, machine: list[float]
                     ) -> None:
    print(f"\n1. Throughput, end to end on PostgreSQL + Redis: {args.emails} emails, k "
          f"`postdesk worker` processes x {args.worker_threads} thread(s); seconds from the "
          "first enqueue")
    head = (f"{'senders':>7} {'k':>3} {'processed s':>11} {'acks sent s':>11} "
            f"{'all sent s':>10} {'emails/s':>9} {'worker CPU ms/email':>19} "
            f"{'pg ms/email':>11} {'redis ms':>8} {'feed s':>7} {'enq s':>5} "
            f"{'load':>5} {'lock-wait':>9} {'runq ms/email':>13} {'idle':>4}  raw messages")
    print_head(head)
    for r in runs:
        print(f"{r.senders:>7} {r.workers:>3} {fmt(r.processed_s, 2):>11} "
              f"{fmt(r.acked_s, 2):>11} {fmt(r.all_sent_s, 2):>10} {fmt(r.rate):>9} "
              f"{fmt(r.cpu_ms):>19} {r.postgres_cpu_s * 1000 / r.emails:>11.1f} "
              f"{r.redis_cpu_s * 1000 / r.emails:>8.1f} {r.feed_s:>7.1f} {r.enqueue_s:>5.2f} "
              f"{r.load:>5.2f} "
              f"{fmt(r.lock_waiters, 2):>9} {runq_cell(r):>13} "
              f"{(f'{r.idle_share:.0%}' if r.idle_share is not None else '-'):>4}  "
              f"{r.statuses}{'  ' + r.note if r.note else ''}")
    print("  emails/s = emails / (acks sent - first enqueue); load = 1-min load average at "
          "the start of the run;\n  pg ms/email, redis ms: CPU of the desk database's "
          "PostgreSQL backends and of the Redis server over the same span as the workers';\n"
          "  feed s: accepting the emails (before the run); enq s: first to last enqueue by "
          "the enqueuing process, which runs beside the workers;\n"
          "  runq ms/email: workers + PostgreSQL backends, time runnable but waiting for a "
          "CPU (/proc/*/task/*/schedstat); idle: the machine's idle share from the first "
          "email taken")
    print(f"\n  summary (best of {args.repeat} run(s) per variant):")
    head = f"  {'senders':>7} " + "".join(f"{'k=' + str(k) + ' emails/s':>15}"
                                         for k in args.worker_list)
    ratios = [k for k in args.worker_list if k != args.worker_list[0]]
    head += "".join(f"{'k' + str(k) + '/k' + str(args.worker_list[0]):>9}" for k in ratios)
    print(head)
    for senders in args.sender_list:
        best: dict[int, float] = {}
        for r in runs:
            if r.senders == senders and r.rate:
                best[r.workers] = max(best.get(r.workers, 0.0), r.rate)
        line = f"  {senders:>7} " + "".join(f"{fmt(best.get(k)):>15}" for k in args.worker_list)
        base = best.get(args.worker_list[0])
        for k in ratios:
            line += f"{(f'{best[k] / base:.2f}x' if base and k in best else '-'):>9}"
        print(line)
    paired = paired_ratios(runs, args)
    if paired:
        print("\n  paired (each round's k runs one after another, so a round's ratio "
              "compares runs a few seconds apart):")
        for senders, k, ratios in paired:
            print(f"  {senders:>7} senders  k{k}/k{args.worker_list[0]}: "
                  f"{rounds_summary(ratios, unit='x')}")
    if machine:
        print("  the machine, before each round: two busy Python processes side by side "
              f"against one alone: {rounds_summary(machine, unit='x')}\n"
              "  (what two CPU-bound processes gained over one in that round: a reference "
              "for k2/k1, not a bound)")


def runq_cell(r: Run) -> str:
    """The workers' and the backends' run-queue wait per email, e.g. ``4.7+2.1``."""
    return (f"{r.worker_runq_s * 1000 / r.emails:.1f}+"
            f"{r.postgres_runq_s * 1000 / r.emails:.1f}")


def paired_ratios(runs: list[Run], args: argparse.Namespace
                  ) -> list[tuple[int, int, list[float]]]:
    """Per senders and k (not the first): each round's rate with k workers over the same
    round's rate with the first k. A shared machine's speed drifts over minutes; a ratio
    of two runs made back to back moves less than one of each variant's best."""
    if args.repeat < 2 or len(args.worker_list) < 2:
        return []
    rates = {(r.senders, r.workers, r.round): r.rate for r in runs if r.rate}
    base_k = args.worker_list[0]
    out: list[tuple[int, int, list[float]]] = []
    for senders in args.sender_list:
        for k in args.worker_list[1:]:
            ratios = [rates[(senders, k, i)] / rates[(senders, base_k, i)]
                      for i in range(args.repeat)
                      if (senders, k, i) in rates and (senders, base_k, i) in rates]
            if ratios:
                out.append((senders, k, ratios))
    return out


# === part 2: latency at a fixed rate ==========================================================

@dataclass
class Sent:
    index: int
    message_id: str
    due: float
    started: float = 0.0
    answered: float = 0.0
    error: str = ""


@dataclass
class Latency:
    workers: int
    threads: int
    rate: float
    duration: float
    connections: int
    senders: int
    emails: int
    achieved_rate: float
    late_starts: int                       # sends started > 50 ms after their due time
    errors: int
    missing_ack: int
    load: float
    accept_ms: list[float] = field(default_factory=list)
    outbox_ms: list[float] = field(default_factory=list)
    sent_ms: list[float] = field(default_factory=list)
    created_ms: list[float] = field(default_factory=list)
    statuses: str = ""
    # share of one core each group of processes used while the emails were sent
    cpu_share: dict[str, float] = field(default_factory=dict)


class Pacer:
    """Sends emails at a fixed rate over a few SMTP connections; email i is due at
    t0 + i / rate, and is taken by the first free connection."""

    def __init__(self, port: int, emails: list[tuple[str, str, bytes]], rate: float,
                 connections: int):
        self.port, self.emails, self.rate = port, emails, rate
        self.connections = connections
        self.due: queue.Queue[Sent | None] = queue.Queue()
        self.sent: list[Sent] = []

    def _connection(self) -> None:
        client: smtplib.SMTP | None = None
        while True:
            item = self.due.get()
            if item is None:
                break
            sender, raw = self.emails[item.index][0], self.emails[item.index][2]
            item.started = time.time()
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
                client.sendmail(sender, [SUPPORT], raw)
                item.answered = time.time()
            except (smtplib.SMTPException, OSError) as exc:
                item.error = f"{type(exc).__name__}: {exc}"[:200]
                with suppress(Exception):
                    if client is not None:
                        client.close()
                client = None
        if client is not None:
            with suppress(Exception):
                client.quit()

    def run(self) -> float:
        threads = [threading.Thread(target=self._connection, daemon=True)
                   for _ in range(self.connections)]
        for t in threads:
            t.start()
        t0 = time.time() + 0.2
        for i, (_sender, message_id, _raw) in enumerate(self.emails):
            due = t0 + i / self.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            item = Sent(i, message_id, due)
            self.sent.append(item)
            self.due.put(item)
        for _ in threads:
            self.due.put(None)
        for t in threads:
            t.join(timeout=120)
        return t0


FLOOR_MARGIN = 50   # acknowledgement ids (more than are written while one transaction lives)


class OutboxPoller(threading.Thread):
    """Notes when each acknowledgement is first seen out of ``draft`` (rendered and
    committed: in the outbox, ready to send)."""

    def __init__(self, desk: Desk, interval: float):
        super().__init__(daemon=True)
        self.desk, self.interval = desk, interval
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        # Each poll reads only the acknowledgements from the oldest one still a draft on,
        # planned for the value at hand (never prepared: psycopg prepares a query run five
        # times, and PostgreSQL's generic plan for ``id >= $1`` is a sequential scan).
        # Reading every acknowledgement each time, 50 times a second, made the poller's
        # own load (PostgreSQL's and this process's) grow with the run.
        floor = 0
        with pg_connect(self.desk) as conn:
            while not self.stop.is_set():
                now = time.time()
                drafts = []
                for outbox_id, status in conn.execute(
                        "SELECT id, status FROM outbox WHERE template = 'acknowledgement' "
                        "AND id >= %s", (floor,), prepare=False):
                    if status == "draft":
                        drafts.append(int(outbox_id))
                    else:
                        self.seen.setdefault(int(outbox_id), now)
                # Less a margin: an id is taken when its row is written and becomes
                # visible when its transaction commits, so a lower id may still appear.
                if drafts:
                    floor = max(0, min(drafts) - FLOOR_MARGIN)
                elif self.seen:
                    floor = max(0, max(self.seen) + 1 - FLOOR_MARGIN)
                self.stop.wait(self.interval)


def ack_rows(desk: Desk) -> dict[str, tuple[int, float, float | None]]:
    """message_id of the client's email -> (outbox id, ack created_at, ack sent_at)."""
    rows = desk.query(
        "SELECT r.message_id, o.id, o.created_at, o.sent_at FROM raw_messages r "
        "JOIN outbox o ON o.ticket_id = r.ticket_id AND o.template = 'acknowledgement' "
        "WHERE r.message_id IS NOT NULL")
    return {str(mid).strip("<>").lower(): (int(oid), created.timestamp(),
                                           sent.timestamp() if sent else None)
            for mid, oid, created, sent in rows}


def wait_for_acks(desk: Desk, message_ids: Sequence[str], timeout: float) -> None:
    wanted = {m.strip("<>").lower() for m in message_ids}
    deadline = time.time() + timeout
    while time.time() < deadline:
        acks = ack_rows(desk)
        if all(m in acks and acks[m][2] is not None for m in wanted):
            return
        time.sleep(0.2)


def measure_latency(args: argparse.Namespace, tree: Tree) -> Latency:
    load = os.getloadavg()[0]
    prefetch = args.latency_prefetch or None
    with private_desk(args, tree, "postgres", args.redis_url, prefetch) as desk:
        tag = uuid.uuid4().hex[:6]
        total = args.warmup + int(args.rate * args.duration)
        emails: list[tuple[str, str, bytes]] = []
        for i in range(total):
            sender, raw = make_email(i, i % args.senders_latency, tag)
            emails.append((sender, f"<bench-{tag}-{i}@client.example>", raw))
        procs, _logs = start_workers(desk, tree, args.latency_workers, "lat")
        smtp = None
        poller = OutboxPoller(desk, args.poll_ms / 1000)
        try:
            smtp = start_smtp(desk, tree, desk.config)
            if args.warmup:
                warm = Pacer(desk.smtp_port, emails[:args.warmup], args.rate, 1)
                warm.run()
                wait_for_acks(desk, [m for _s, m, _r in emails[:args.warmup]], args.drain)
            poller.start()
            pacer = Pacer(desk.smtp_port, emails[args.warmup:], args.rate, args.connections)
            processes = {"workers": [p.pid for p in procs], "postdesk smtp": [smtp.pid]}
            cpu_before = cpu_by_process(desk, processes)
            started = time.time()
            pacer.run()
            sending_s = time.time() - started
            cpu_after = cpu_by_process(desk, processes)
            wait_for_acks(desk, [s.message_id for s in pacer.sent], args.drain)
            time.sleep(args.poll_ms / 1000 * 2)
        finally:
            poller.stop.set()
            if smtp is not None:
                stop_process(smtp)
            for proc in procs:
                stop_worker(proc)
        poller.join(timeout=10)
        acks = ack_rows(desk)
        measured = pacer.sent
        result = Latency(
            args.latency_workers, args.worker_threads, args.rate, args.duration,
            args.connections, args.senders_latency, len(measured),
            len(measured) / sending_s if sending_s else 0.0,
            sum(1 for s in measured if s.started - s.due > 0.05),
            sum(1 for s in measured if s.error), 0, load)
        result.cpu_share = {name: (cpu_after[name] - cpu_before[name]) / sending_s
                            for name in cpu_after} if sending_s else {}
        inf = float("inf")
        for s in measured:
            if s.error:
                continue
            result.accept_ms.append((s.answered - s.due) * 1000)
            ack = acks.get(s.message_id.strip("<>").lower())
            if ack is None or ack[2] is None:
                result.missing_ack += 1
            seen = poller.seen.get(ack[0]) if ack else None
            result.outbox_ms.append((seen - s.due) * 1000 if seen else inf)
            result.sent_ms.append((ack[2] - s.due) * 1000 if ack and ack[2] else inf)
            result.created_ms.append((ack[1] - s.due) * 1000 if ack else inf)
        result.statuses = ", ".join(
            f"{s}{'/' + why if why else ''} {n}" for s, why, n in desk.query(
                "SELECT status, COALESCE(reason, ''), COUNT(*) FROM raw_messages "
                "GROUP BY 1, 2 ORDER BY 1, 2"))
        return result


def print_latency(r: Latency, args: argparse.Namespace) -> None:
    print(f"\n2. SMTP -> acknowledgement latency at {r.rate:g} emails/s for {r.duration:g} s: "
          f"PostgreSQL + Redis, {r.workers} `postdesk worker` x {r.threads} thread(s), "
          f"worker_prefetch {args.latency_prefetch or 'default (32)'}, "
          f"`postdesk smtp`, {r.connections} SMTP connection(s), {r.senders} sender(s)")
    print(f"  {r.emails} emails measured (after {args.warmup} warm-up), sent at "
          f"{r.achieved_rate:.1f}/s; {r.late_starts} started > 50 ms after due; "
          f"{r.errors} SMTP errors; {r.missing_ack} without a sent acknowledgement after "
          f"{args.drain:g} s; load {r.load:.2f} at the start")
    head = f"  {'due -> ...':38} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'max ms':>9}"
    print_head(head, "  ")
    for label, values in (("250 for DATA (accepted)", r.accept_ms),
                          ("ack row stamped (created_at)", r.created_ms),
                          ("ack in outbox (rendered, committed)", r.outbox_ms),
                          ("ack sent (sent_at)", r.sent_ms)):
        if not values:
            print(f"  {label:38} {'-':>9} {'-':>9} {'-':>9} {'-':>9}")
            continue
        cells = "".join(f"{fmt(pct(values, q)):>9} " for q in (50, 95, 99))
        print(f"  {label:38} {cells}{fmt(max(values)):>8}")
    print(f"  created_at is the worker's clock when processing began (before commit); 'in "
          f"outbox' is polled every {args.poll_ms:g} ms; raw messages: {r.statuses}")
    if r.cpu_share:
        shares = ", ".join(f"{name} {100 * share:.0f}%" for name, share in r.cpu_share.items())
        print(f"  CPU while sending, in % of one core (the machine has {os.cpu_count()}): "
              f"{shares}; total {100 * sum(r.cpu_share.values()):.0f}%")
    if r.outbox_ms:
        p99 = pct(r.outbox_ms, 99)
        print(f"  p99 SMTP -> acknowledgement in the outbox: {fmt(p99)} ms "
              f"({'<' if p99 < 1000 else '>='} 1 s)")


# === main =====================================================================================

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Workers scaling and SMTP -> acknowledgement "
                                "latency on PostgreSQL + Redis (see the module docstring).")
    p.add_argument("--tree", type=Path, default=DEFAULT_TREE,
                   help="checkout to measure (default: the repository holding this script)")
    p.add_argument("--emails", type=int, default=400, help="emails per throughput run")
    p.add_argument("--workers", default="1,2,4", help="worker process counts (part 1)")
    p.add_argument("--senders", default="1,5", help="sender counts (part 1)")
    p.add_argument("--worker-threads", type=int, default=1,
                   help="desk.worker_threads of each worker process")
    p.add_argument("--repeat", type=int, default=1, help="runs of each part 1 variant")
    p.add_argument("--prefetch", type=int, default=0,
                   help="desk.worker_prefetch in part 1 (0: the desk's default, 32; earlier "
                        "passes used 2)")
    p.add_argument("--timeout", type=float, default=300, help="max seconds per part 1 run")
    p.add_argument("--rate", type=float, default=50, help="emails/s in part 2")
    p.add_argument("--duration", type=float, default=60, help="seconds of sending in part 2")
    p.add_argument("--latency-workers", type=int, default=2, help="worker processes, part 2")
    p.add_argument("--latency-prefetch", type=int, default=0,
                   help="desk.worker_prefetch in part 2 (0: the desk's default, 32)")
    p.add_argument("--connections", type=int, default=4, help="SMTP connections, part 2")
    p.add_argument("--senders-latency", type=int, default=5, help="sender count, part 2")
    p.add_argument("--warmup", type=int, default=20, help="part 2 emails not counted")
    p.add_argument("--drain", type=float, default=60,
                   help="part 2: seconds to wait for the last acknowledgements")
    p.add_argument("--poll-ms", type=float, default=20, help="part 2 outbox poll interval")
    p.add_argument("--skip-throughput", action="store_true", help="skip part 1")
    p.add_argument("--skip-latency", action="store_true", help="skip part 2")
    p.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN)
    p.add_argument("--redis-url", default=DEFAULT_REDIS)
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, configs)")
    p.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    p.add_argument("--_child", choices=["enqueue"], help=argparse.SUPPRESS)
    p.add_argument("--_config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.worker_list = [int(k) for k in args.workers.split(",") if k.strip()]
    args.sender_list = [int(s) for s in args.senders.split(",") if s.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tree = Tree(args.tree.resolve())
    reexec_in_tree(tree)
    if args._child == "enqueue":
        child_enqueue(args._config)
        return 0
    require_loopback(args.pg_admin_url, "--pg-admin-url")
    require_loopback(args.redis_url, "--redis-url")
    print(f"postdesk scale-out - tree {tree.describe()}")
    print(f"{python_line()}, {datetime.now(UTC).isoformat(timespec='seconds')}, "
          f"load average {load_average()}")
    report: dict[str, Any] = {"tree": str(tree.path)}
    if not args.skip_throughput:
        runs: list[Run] = []
        # Interleaved repeats, so slow phases of a shared machine hit every variant alike;
        # odd rounds run the k values in reverse (k=1, k=2 | k=2, k=1 | ...), so a drift that
        # lasts a round does not always favour the same k of a round's pair.
        machine: list[float] = []
        for round_ in range(args.repeat):
            if len(args.worker_list) > 1:
                machine.append(two_process_scaling())
            for senders in args.sender_list:
                order = args.worker_list if round_ % 2 == 0 else args.worker_list[::-1]
                for k in order:
                    print(f"  part 1: {senders} sender(s), k={k} ...", file=sys.stderr,
                          flush=True)
                    try:
                        runs.append(dataclasses.replace(
                            measure_throughput(args, tree, senders, k), round=round_))
                    except Exception as exc:
                        print(f"  part 1 ({senders} senders, k={k}) failed: {exc}",
                              file=sys.stderr)
        runs.sort(key=lambda r: (r.senders, r.workers))
        print_throughput(runs, args, machine)
        report["throughput"] = [asdict(r) | {"rate": r.rate, "cpu_ms": r.cpu_ms} for r in runs]
        report["two_process_scaling"] = machine
    if not args.skip_latency:
        print(f"  part 2: {args.rate:g}/s for {args.duration:g} s ...", file=sys.stderr,
              flush=True)
        try:
            latency = measure_latency(args, tree)
            print_latency(latency, args)
            report["latency"] = asdict(latency)
        except Exception as exc:
            print(f"  part 2 failed: {exc}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
