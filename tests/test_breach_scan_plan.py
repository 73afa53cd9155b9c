"""The scheduler's two breach scans must be index scans on their partial indexes, not a
full read of ``sla_clocks``: a scan runs every ``scan_interval`` against every clock ever
started, so a sequential scan would cost more each month the desk runs.

Data is built by the benchmark's own loader (``bench/bench_breach_scan.py``: one org, open
tickets with a running first_response and resolution clock each, 0.5% already at risk or
due), so the plan checked here is the plan the benchmark times.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from postdesk.storage.db import make_engine
from postdesk.storage.migrate import upgrade
from tests.support import postgres_database, service_or_skip

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_breach_scan.py"
TICKETS = 10_000  # 20,000 clocks: enough that the planner's costs favour the index
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # bench/ is scripts, not a package: load the file itself.
    spec = importlib.util.spec_from_file_location("bench_breach_scan", BENCH)
    assert spec is not None and spec.loader is not None, f"missing {BENCH}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _loaded(bench: ModuleType, url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        upgrade(engine)
        bench.build(engine, TICKETS, NOW, seed=1)
        bench.analyze(engine)
        yield engine
    finally:
        engine.dispose()


def _assert_scans_use_partial_indexes(bench: ModuleType, engine: Engine) -> None:
    with Session(engine) as session:
        for name, (query, index) in bench.SCANS.items():
            plan = bench.explain(session, query(NOW))
            shown = "\n".join(plan)
            assert index in bench.plan_indexes(plan), f"{name} scan skips {index}:\n{shown}"
            assert "sla_clocks" not in bench.full_scans(plan), (
                f"{name} scan reads all of sla_clocks:\n{shown}")
            # and it still finds the hot clocks (a plan over an empty index proves nothing)
            assert session.scalars(query(NOW)).first() is not None, name


@pytest.mark.services
def test_postgres_breach_scans_use_partial_indexes(bench: ModuleType) -> None:
    admin_url = service_or_skip("POSTDESK_TEST_POSTGRES_URL", "PostgreSQL")
    with postgres_database(admin_url) as url, _loaded(bench, url) as engine:
        _assert_scans_use_partial_indexes(bench, engine)


def test_sqlite_breach_scans_use_partial_indexes(bench: ModuleType, tmp_path: Path) -> None:
    # SQLite uses a partial index only when the query's WHERE repeats the index's terms;
    # this catches the query and the index drifting apart.
    with _loaded(bench, f"sqlite:///{tmp_path / 'postdesk.db'}") as engine:
        _assert_scans_use_partial_indexes(bench, engine)
