"""Helpers shared by the benchmark scripts in this folder (standard library only).

The scripts are run as ``python3 bench/X.py`` (or re-executed with another tree's
``.venv/bin/python`` on this same file), so this folder is ``sys.path[0]`` and
``import benchlib`` works; a script imported as a module (``bench_pipeline_locks`` from
``bench_scaleout``) finds it the same way.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_PG_ADMIN = os.environ.get("POSTDESK_TEST_POSTGRES_URL",
                                  "postgresql://postgres@127.0.0.1:5432/postgres")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SUPPORT = "support@desk.example"


# --- processes -------------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """The environment for postdesk processes: POSTDESK_* variables would override the
    config file (docs/reference.md), so none is passed on."""
    return {k: v for k, v in os.environ.items() if not k.startswith("POSTDESK_")}


def is_local(url: str) -> bool:
    """A server on this machine: a loopback host, or PostgreSQL's Unix socket named by its
    directory (``postgresql://user@/db?host=/run/postgresql``). A URL with no host at all
    is not taken as local: libpq would then follow PGHOST, which may name another machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in LOOPBACK:
        return True
    socket_dirs = parse_qs(parts.query).get("host", [])
    return not host and bool(socket_dirs) and all(d.startswith("/") for d in socket_dirs)


def database_url(admin_url: str, name: str, scheme: str = "postgresql+psycopg") -> str:
    """The URL of database ``name`` on the server of ``admin_url``: its user, host and
    port, and its query (``?host=/run/postgresql``: the Unix socket) kept."""
    parts = urlsplit(admin_url)
    return f"{scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")


def require_loopback(url: str, what: str) -> None:
    if not is_local(url):
        sys.exit(f"{what}: {url!r} is not a loopback address or a Unix socket; refusing "
                 "to use it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(done: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Call ``done`` every ``interval`` seconds until it is true (True) or ``timeout``
    seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(interval)
    return False


def wait_for_port(port: int, proc: subprocess.Popen[Any], log: Path, *,
                  what: str | None = None, timeout: float = 60, interval: float = 0.05
                  ) -> None:
    """Until something accepts connections on 127.0.0.1:``port``; RuntimeError (with the
    tail of ``log``) if ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what or f'server on port {port}'} did not start:\n"
                               + log.read_text(errors="replace")[-3000:])
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], grace: float = 15, *,
                 wrapped: bool = False) -> None:
    """Stop one process this script started, by its pid: SIGTERM, then SIGKILL.

    ``wrapped``: ``proc`` is a wrapper (a profiler given as a PDBENCH_*_PREFIX) running
    the server as its child. The child is sent SIGTERM, so the server shuts down as it
    would alone, and the wrapper ends when it does (py-spy writes its profile then); a
    SIGTERM to py-spy itself ended py-spy and left the server running, orphaned."""
    if proc.poll() is not None:
        return
    targets = (_children(proc.pid) if wrapped else []) or [proc.pid]
    for pid in targets:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        for pid in targets:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``; none elsewhere)."""
    children = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            # The name (2nd field) may hold spaces: the parent pid is the 2nd after ")".
            if int(entry.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.parent.name))
    return children


# --- the tree measured ------------------------------------------------------------------------

def describe_tree(path: Path) -> str:
    """``PATH (git SHORT[, N uncommitted changes])``."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
        return proc.stdout.strip()

    dirty = len([line for line in git("status", "--porcelain").splitlines() if line])
    return f"{path} (git {git('rev-parse', '--short', 'HEAD') or '?'}" + (
        f", {dirty} uncommitted changes)" if dirty else ")")


@dataclass
class Tree:
    """A checkout with its own ``.venv``."""

    path: Path

    @property
    def python(self) -> Path:
        return self.path / ".venv" / "bin" / "python"

    @property
    def postdesk(self) -> Path:
        return self.path / ".venv" / "bin" / "postdesk"

    def describe(self) -> str:
        return describe_tree(self.path)

    def precompile(self) -> None:
        """Write the tree's bytecode (untimed), as ``pip install`` does for an installed
        package: an editable install under ``PYTHONDONTWRITEBYTECODE=1`` (set on these
        machines) would otherwise compile about 90 of its modules from source in every
        command, 0.18 s a start that no installed copy pays (nor the peer's, which pip
        installed)."""
        dirs = [str(self.path / d) for d in ("postdesk", "ingest", "workflow", "outbound",
                                              "storage", "mail") if (self.path / d).is_dir()]
        subprocess.run([str(self.python), "-m", "compileall", "-q", *dirs], check=True)


def reexec_in_tree(tree: Tree, script: Path) -> None:
    """Run the tree's code with the tree's own interpreter: re-execute ``script`` (the
    calling script, with the same arguments) there, unless already running in it."""
    if Path(sys.prefix).resolve() == (tree.path / ".venv").resolve():
        return
    if not tree.python.exists():
        sys.exit(f"{tree.python} does not exist: create it with\n  cd {tree.path} && "
                 "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'")
    os.execv(str(tree.python), [str(tree.python), str(script), *sys.argv[1:]])


# --- an embedded desk's configuration ---------------------------------------------------------

def desk_config(*, database_url: str, data_dir: Path | str, port: int, max_bytes: int,
                broker_url: str = "stub://", desk_extra: str = "") -> str:
    """The TOML of a minimal desk: one always-open plan, one client org (client.example),
    one lead; flood and auto-reply limits out of the way. ``desk_extra`` is added to
    ``[desk]``."""
    extra = f"{desk_extra}\n" if desk_extra else ""
    return f"""
[desk]
name = "Bench Support"
support_addresses = ["{SUPPORT}"]
ticket_prefix = "PD"
database_url = "{database_url}"
broker_url = "{broker_url}"
data_dir = "{data_dir}"
secret = "bench-secret-key"
flood_tickets_per_hour = 1000000
auto_reply_limit_per_hour = 1000000
{extra}
[smtp_in]
host = "127.0.0.1"
port = {port}
max_message_bytes = {max_bytes}

[calendars.always]
always_open = true

[plans.basic]
calendar = "always"
first_response = {{ P1 = "1h", P2 = "2h", P3 = "5h" }}

[[orgs]]
slug = "clientco"
name = "Client Co"
plan = "basic"
domains = ["client.example"]

[[staff]]
email = "dev1@agency.example"
name = "Dev One"
role = "lead"
"""


# --- figures and tables -----------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rounds_summary(ratios: Sequence[float], digits: int = 2, unit: str = "") -> str:
    """``median 1.62x over 16 rounds (rounds: 1.84, 1.50, ...); the median lies in
    1.50-1.92x with 97.9% confidence``: a ratio measured once per round against the same
    round's baseline (a shared machine drifts between rounds). The interval is given from
    six rounds on (``median_interval``)."""
    each = ", ".join(f"{r:.{digits}f}" for r in ratios)
    summary = (f"median {statistics.median(ratios):.{digits}f}{unit} over {len(ratios)} "
               f"rounds (rounds: {each})")
    interval = median_interval(ratios)
    if interval is not None:
        low, high, coverage = interval
        summary += (f"; the median lies in {low:.{digits}f}-{high:.{digits}f}{unit} with "
                    f"{coverage:.1%} confidence")
    return summary


def median_interval(values: Sequence[float], confidence: float = 0.95
                    ) -> tuple[float, float, float] | None:
    """A distribution-free confidence interval for the median of what ``values`` sample
    (rounds of a ratio on a drifting machine): the k-th smallest and the k-th largest
    value, with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is still at
    least ``confidence``. Returns (low, high, coverage), or None when no k reaches it
    (five values or fewer for 95 %: the smallest and largest of five cover 94 %).

    Whether a target holds "reliably" on a noisy machine is whether the interval's low
    end clears it, not whether one sitting's median did."""
    n = len(values)
    ordered = sorted(values)
    below = 0.0          # P(Binomial(n, 1/2) < k), for k = 1, 2, ...
    best: tuple[float, float, float] | None = None
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1) / 2 ** n
        coverage = 1 - 2 * below
        if coverage < confidence:
            break
        best = (ordered[k - 1], ordered[n - k], coverage)
    return best


# A CPU-bound loop in a child process: it waits for one byte on stdin (so that copies
# started together begin together), runs, and prints its own wall seconds.
_BUSY_LOOP = ("import sys, time\nsys.stdin.buffer.read(1)\nt = time.perf_counter()\nx = 0\n"
              "for i in range({turns}): x += i & 7\nprint(time.perf_counter() - t)\n")


def busy_loop_seconds(copies: int, turns: int = 6_000_000) -> list[float]:
    """Each copy's wall seconds for the same CPU-bound Python loop, ``copies`` run at once
    in processes of their own."""
    code = _BUSY_LOOP.format(turns=turns)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=False) for _ in range(copies)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"g")
        proc.stdin.close()
    seconds = []
    for proc in procs:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        if proc.wait() != 0:
            raise RuntimeError(f"the busy loop exited with {proc.returncode}")
        seconds.append(float(out))
    return seconds


def two_process_scaling() -> float:
    """What two busy processes get out of this machine against one: 2 x one loop's time
    alone / the slower of two run side by side (alone measured before and after the pair,
    averaged). 2.0 on two cores of their own; less where the two "cores" share a physical
    one, or the host takes its share. The ceiling of a k=2 / k=1 ratio of CPU-bound
    work, measured beside it."""
    before = busy_loop_seconds(1)[0]
    pair = max(busy_loop_seconds(2))
    after = busy_loop_seconds(1)[0]
    return 2 * ((before + after) / 2) / pair


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, ``"0.52 0.61 0.70"``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def python_line(*, executable: bool = False) -> str:
    """``python 3.12.3[ (/path/python)], N CPUs``: the start of a report's second line."""
    where = f" ({sys.executable})" if executable else ""
    return f"python {sys.version.split()[0]}{where}, {os.cpu_count()} CPUs"


def print_head(head: str, indent: str = "") -> None:
    """A table's heading line (``head`` includes ``indent``) and its rule below."""
    print(head)
    print(indent + "-" * (len(head) - len(indent)))
