"""postdesk/logs.py: repeated warnings are counted instead of written, and an expected
outage is one line, not a traceback."""

from __future__ import annotations

import logging

import pytest

from postdesk import logs


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def capturing(window: float, clock: list[float]) -> tuple[logging.Logger, Capture]:
    handler = Capture()
    repeat = logs.RepeatFilter(window, monotonic=lambda: clock[0], emit=handler.handle)
    handler.addFilter(repeat)
    handler.addFilter(logs.OutageFilter())
    logger = logging.getLogger(f"test.logs.{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, handler


def test_a_storm_of_identical_warnings_is_one_line_and_a_count_per_window() -> None:
    clock = [0.0]
    logger, out = capturing(30.0, clock)
    for raw_id in range(872):
        clock[0] = raw_id * 0.03                 # 872 warnings in about 26 s
        logger.warning("could not enqueue raw message %s (sweeper will retry): %s", raw_id,
                       "connection refused")
    clock[0] = 31.0
    logger.info("broker is back")
    assert out.lines == [
        "WARNING could not enqueue raw message 0 (sweeper will retry): connection refused",
        "WARNING … 871 more in the last 30 s like: could not enqueue raw message",
        "INFO broker is back"]


def test_different_warnings_and_info_lines_are_not_limited() -> None:
    clock = [0.0]
    logger, out = capturing(30.0, clock)
    logger.warning("one thing")
    logger.warning("another thing")
    for _ in range(3):
        logger.info("progress")
    assert out.lines == ["WARNING one thing", "WARNING another thing"] + ["INFO progress"] * 3


def test_flush_writes_the_pending_count() -> None:
    clock = [0.0]
    handler = Capture()
    repeat = logs.RepeatFilter(30.0, monotonic=lambda: clock[0], emit=handler.handle)
    handler.addFilter(repeat)
    logger = logging.getLogger("test.logs.flush")
    logger.propagate = False
    logger.addHandler(handler)
    for _ in range(5):
        logger.error("database unavailable")
    repeat.flush()
    assert handler.lines == ["ERROR database unavailable",
                             "ERROR … 4 more in the last 30 s like: database unavailable"]


def test_an_expected_outage_is_one_line_without_a_traceback() -> None:
    logger, out = capturing(30.0, [0.0])
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        logger.exception("Encountered exception while closing Connection.")
    try:
        raise ValueError("a bug")
    except ValueError:
        logger.exception("something else")
    assert out.lines[0] == ("ERROR Encountered exception while closing Connection. "
                            "(ConnectionResetError: [Errno 104] Connection reset by peer)")
    assert out.lines[1].startswith("ERROR something else\nTraceback")   # bugs keep theirs


def test_outages_are_recognised_by_type_without_importing_the_library() -> None:
    pika_exceptions = pytest.importorskip("pika.exceptions")
    assert logs.is_outage(pika_exceptions.StreamLostError("lost"))
    assert logs.is_outage(ConnectionRefusedError())
    assert not logs.is_outage(KeyError("x"))
