"""Ports for the servers the tests start (aiosmtpd doors, Dovecot, the smarthost sink,
`postdesk smtp` in a subprocess).

Why not simply ``bind(0)``: the kernel hands out that port from its ephemeral range, the
same range it draws the local end of every outgoing connection from. Between reading the
port and the server binding it, any client on the machine — a PostgreSQL, Redis or SMTP
connection in another xdist worker — may take it, and the server fails with "already in
use" (CI saw exactly that once, on a `postdesk smtp` deployment). Below the ephemeral
range no outgoing connection ever lands, so only another listener can take a port there;
each xdist worker draws from its own block of that space, so the workers do not collide
with each other either, and every candidate is bound once to check that nothing else on
the machine holds it.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

LOWEST = 10_000                      # clear of the well-known and registered low ports
RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_floor(range_file: Path = RANGE_FILE) -> int:
    """The lowest port the kernel may use for an outgoing connection (32768 when the
    range cannot be read, Linux's default)."""
    try:
        return int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def worker_block(worker: str | None, workers: int, floor: int) -> range:
    """The ports this pytest process may use: its share of LOWEST..floor.

    ``worker`` is xdist's ``gwN`` (None outside xdist: the whole space).
    """
    if floor - LOWEST < 100:          # a machine whose ephemeral range starts very low
        raise RuntimeError(f"no room for test ports below the ephemeral range ({floor})")
    index = int(worker[2:]) if worker and worker.startswith("gw") else 0
    size = (floor - LOWEST) // max(workers, 1)
    start = LOWEST + (index % max(workers, 1)) * size
    return range(start, start + size)


def _candidates() -> Iterator[int]:
    """This process's block, round and round, from a random start: a second test run
    right after this one (or a bench beside it) does not begin on the ports the first
    left in TIME_WAIT."""
    block = worker_block(os.environ.get("PYTEST_XDIST_WORKER"),
                         int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
                         ephemeral_floor())
    # C iterators, not a generator: two threads asking at once get two ports, not a
    # "generator already executing" error.
    return itertools.islice(itertools.cycle(block), random.randrange(len(block)), None)


# Made on the first call, not at import: tests.support imports this module, and a machine
# with no room below its ephemeral range should fail the tests that need a port, not all.
_candidates_of_this_process: Iterator[int] | None = None


def bindable(host: str, port: int) -> bool:
    """True when nothing on the machine holds ``host:port`` (no SO_REUSEADDR: a port
    with connections still in TIME_WAIT counts as held, to stay clear of it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def first_bindable(host: str, candidates: Iterator[int], tries: int = 2_000) -> int:
    """The first of ``candidates`` that nothing on ``host`` holds."""
    for port in itertools.islice(candidates, tries):
        if bindable(host, port):
            return port
    raise RuntimeError(f"no free test port in {tries:,} tries below the ephemeral range")


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that no outgoing connection can take and no other test worker
    will be handed; it was free a moment ago."""
    global _candidates_of_this_process
    if _candidates_of_this_process is None:
        _candidates_of_this_process = _candidates()
    return first_bindable(host, _candidates_of_this_process)
