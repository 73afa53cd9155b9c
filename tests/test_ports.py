"""The test servers' ports stay out of the kernel's ephemeral range and out of each
other's way (see tests/ports.py for why)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.ports import (
    LOWEST,
    bindable,
    ephemeral_floor,
    first_bindable,
    free_port,
    worker_block,
)


def test_the_ephemeral_floor_is_read_from_the_kernels_range(tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("40000\t60999\n")
    assert ephemeral_floor(range_file) == 40_000


def test_an_unreadable_range_falls_back_to_linuxs_default(tmp_path: Path) -> None:
    assert ephemeral_floor(tmp_path / "missing") == 32_768


def test_each_xdist_worker_draws_from_its_own_block_below_the_floor() -> None:
    blocks = [worker_block(f"gw{i}", 4, 32_768) for i in range(4)]
    ports = [set(block) for block in blocks]
    assert all(block.start >= LOWEST and block.stop <= 32_768 for block in blocks)
    assert all(not (ports[i] & ports[j]) for i in range(4) for j in range(i + 1, 4))


def test_outside_xdist_the_whole_space_is_one_block() -> None:
    assert worker_block(None, 1, 32_768) == range(LOWEST, 32_768)


def test_a_range_starting_too_low_is_refused_rather_than_overlapped() -> None:
    with pytest.raises(RuntimeError, match="no room"):
        worker_block("gw0", 2, LOWEST + 10)


def test_free_ports_lie_below_the_ephemeral_range_and_differ_call_to_call() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(LOWEST <= port < ephemeral_floor() for port in ports)


def test_a_port_held_by_a_listener_is_skipped() -> None:
    held, spare = free_port(), free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", held))
        listener.listen()
        assert not bindable("127.0.0.1", held)
        assert first_bindable("127.0.0.1", iter([held, spare])) == spare
    assert bindable("127.0.0.1", held)


def test_no_free_candidate_is_a_clear_error() -> None:
    held = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", held))
        listener.listen()
        with pytest.raises(RuntimeError, match="no free test port in 3 tries"):
            first_bindable("127.0.0.1", iter([held] * 3), tries=3)
