"""How fast the scheduler's two breach scans run on PostgreSQL, and whether they use the
partial indexes ``ix_sla_clocks_risk_running`` / ``ix_sla_clocks_due_running``.

Run: ``.venv/bin/python bench/bench_breach_scan.py [--tickets 100000] [--runs 20]``

Uses ``POSTDESK_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/
postgres``) as an admin URL: creates a fresh database, runs the Alembic migrations, loads one
org and ``--tickets`` open tickets, each with a running first_response and resolution clock.
Due/risk times are spread over the next four months; ``--hot-share`` (0.5%) of the clocks
have already crossed at "now": half only their at-risk point, half their due time too.

Times ``workflow.breaches.at_risk_query`` / ``breached_query`` executed through a session of
an engine built like the app's (``storage.db.make_engine``). The baseline, measured in the
same run on the same data, is the same query with index scans disabled (sequential scan and
sort), so the ratio compares across machines. Prints ``EXPLAIN (ANALYZE, BUFFERS)`` of both
plans and exits 1 if a scan does not use its partial index. The database is dropped at the
end. ``tests/test_breach_scan_plan.py`` reuses the loader and the plan checks from here.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

# Runnable as a script from the repository root: make `storage` and `workflow` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, Select, insert, text  # noqa: E402
from sqlalchemy.ext.compiler import compiles  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402
from sqlalchemy.sql.compiler import SQLCompiler  # noqa: E402
from sqlalchemy.sql.expression import ClauseElement, Executable  # noqa: E402

from postdesk.storage.db import make_engine, make_session_factory  # noqa: E402
from postdesk.storage.migrate import upgrade  # noqa: E402
from postdesk.storage.models import Org, SlaClock, Ticket  # noqa: E402
from postdesk.workflow.desk.breaches import at_risk_query, breached_query  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# scan name -> (query builder, the partial index it is meant to use)
SCANS: dict[str, tuple[Callable[[datetime], Select[tuple[int]]], str]] = {
    "at_risk": (at_risk_query, "ix_sla_clocks_risk_running"),
    "breached": (breached_query, "ix_sla_clocks_due_running"),
}

# Startup options rather than SET: they hold for every connection of the baseline engine
# (a SET would be undone by the pool's rollback-on-return), and a separate engine keeps
# psycopg's server-side prepared statements, planned with index scans on, out of the
# baseline. Index-only scans too, so "off" means off whatever the index covers.
NO_INDEX_OPTIONS = "-c enable_indexscan=off -c enable_bitmapscan=off -c enable_indexonlyscan=off"

TICKET_COLUMNS = ("id", "org_id", "requester_email", "subject", "status", "priority",
                  "created_at", "updated_at", "chargeable")
CLOCK_COLUMNS = ("ticket_id", "target", "cycle", "calendar", "target_seconds", "target_days",
                 "started_at", "paused_business_seconds", "due_at", "risk_at")
FIRST_RESPONSE = {"P1": 3600, "P2": 2 * 3600, "P3": 5 * 3600}
RESOLUTION_DAYS = {"P1": 2, "P2": 5, "P3": 10}


# --- data -----------------------------------------------------------------------------------

def generate(n_tickets: int, now: datetime, seed: int, hot_share: float = 0.005
             ) -> tuple[list[tuple[Any, ...]], Iterator[tuple[Any, ...]]]:
    """Ticket rows (``TICKET_COLUMNS``, ids 1..n) and a lazy stream of clock rows
    (``CLOCK_COLUMNS``): tuples, not dicts, so 100k tickets do not need gigabytes."""
    rng = random.Random(seed)
    priorities = [rng.choice(("P1", "P2", "P2", "P3", "P3", "P3")) for _ in range(n_tickets)]
    created = [now - timedelta(seconds=rng.randrange(14 * 86400)) for _ in range(n_tickets)]
    tickets = [(i + 1, 0, f"user{i}@client.example", f"Bench ticket {i}", "open",
                priorities[i], created[i], created[i], False) for i in range(n_tickets)]

    def times() -> tuple[datetime, datetime]:
        roll = rng.random()
        if roll < hot_share / 2:  # overdue: both scans find it
            due = now - timedelta(seconds=rng.randrange(60, 6 * 3600))
            return due, due - timedelta(seconds=rng.randrange(60, 2 * 3600))
        if roll < hot_share:      # at risk only
            risk = now - timedelta(seconds=rng.randrange(60, 2 * 3600))
            return now + timedelta(seconds=rng.randrange(60, 6 * 3600)), risk
        due = now + timedelta(seconds=rng.randrange(3600, 120 * 86400))
        # Three quarters of the way to a future due time: still in the future, so exactly
        # the hot share is at risk, whatever the start.
        return due, due - (due - now) / 4

    def clocks() -> Iterator[tuple[Any, ...]]:
        for i in range(n_tickets):
            p, start = priorities[i], created[i]
            due, risk = times()
            yield (i + 1, "first_response", 0, "uk-office", FIRST_RESPONSE[p], 0, start, 0,
                   due, risk)
            due, risk = times()
            yield (i + 1, "resolution", 0, "uk-office", 0, RESOLUTION_DAYS[p], start, 0,
                   due, risk)

    return tickets, clocks()


def build(engine: Engine, n_tickets: int, now: datetime, seed: int = 1,
          hot_share: float = 0.005) -> None:
    """One org, ``n_tickets`` open tickets, two running clocks each. COPY on PostgreSQL
    (several times faster than INSERT for 200k rows); Core executemany elsewhere."""
    tickets, clocks = generate(n_tickets, now, seed, hot_share)
    with engine.begin() as conn:
        org_id = conn.execute(insert(Org).values(slug="bench", name="Bench Org", plan="base",
                                                 active=True).returning(Org.id)).scalar_one()
    tickets = [(t[0], org_id, *t[2:]) for t in tickets]
    if engine.dialect.name == "postgresql":
        _copy(engine, "tickets", (*TICKET_COLUMNS, "cc"), (t + ("[]",) for t in tickets))
        _copy(engine, "sla_clocks", CLOCK_COLUMNS, clocks)
        with engine.begin() as conn:
            # COPY gave explicit ids: move the sequence past them for any later insert.
            conn.execute(text("SELECT setval(pg_get_serial_sequence('tickets', 'id'), "
                              "(SELECT max(id) FROM tickets))"))
        return
    with engine.begin() as conn:
        for table, columns, rows in ((Ticket, TICKET_COLUMNS, iter(tickets)),
                                     (SlaClock, CLOCK_COLUMNS, clocks)):
            while chunk := list(islice(rows, 5000)):
                conn.execute(insert(table), [dict(zip(columns, r, strict=True))
                                             for r in chunk])


def _copy(engine: Engine, table: str, columns: Iterable[str],
          rows: Iterable[tuple[Any, ...]]) -> None:
    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection
        assert pg is not None
        with pg.cursor() as cur, cur.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def analyze(engine: Engine, vacuum: bool = False) -> None:
    """Fresh statistics, as autovacuum would eventually leave them; VACUUM too for the
    timings, so the first runs do not pay for setting hint bits on freshly copied pages."""
    if vacuum:  # VACUUM cannot run inside a transaction block
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


# --- plans ----------------------------------------------------------------------------------

class Explain(Executable, ClauseElement):
    """``EXPLAIN <options> <statement>``. Compiled by the statement's own dialect, so the
    bound ``now`` goes through ``UTCDateTime`` and reaches the server as it does in a scan
    (the planner sees the same parameter values)."""

    inherit_cache = False

    def __init__(self, statement: Select[Any], options: str = "") -> None:
        self.statement = statement
        self.options = options


@compiles(Explain)
def _compile_explain(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return f"EXPLAIN {element.options} {compiler.process(element.statement, **kw)}"


def explain(session: Session, statement: Select[Any], options: str = "") -> list[str]:
    """Plan lines: PostgreSQL's text plan, or SQLite's EXPLAIN QUERY PLAN details."""
    if session.get_bind().dialect.name == "sqlite":
        return [row[3] for row in session.execute(Explain(statement, "QUERY PLAN"))]
    return [row[0] for row in session.execute(Explain(statement, options))]


_INDEX_USED = re.compile(r"Index (?:Only )?Scan(?: Backward)? using (\w+)"
                         r"|Bitmap Index Scan on (\w+)"
                         r"|USING (?:COVERING )?INDEX (\w+)")          # SQLite
_FULL_SCAN = re.compile(r"Seq Scan on (\w+)|^SCAN (\w+)$")            # PostgreSQL | SQLite


def plan_indexes(plan: list[str]) -> set[str]:
    return {next(g for g in m.groups() if g) for line in plan
            for m in _INDEX_USED.finditer(line)}


def full_scans(plan: list[str]) -> set[str]:
    """Tables read in full (PostgreSQL ``Seq Scan``, SQLite ``SCAN t`` with no index)."""
    return {next(g for g in m.groups() if g) for line in plan
            if (m := _FULL_SCAN.search(line.strip()))}


def uses_partial_index(plan: list[str], index: str) -> bool:
    return index in plan_indexes(plan) and "sla_clocks" not in full_scans(plan)


# --- timing ---------------------------------------------------------------------------------

def time_scan(factory: sessionmaker[Session], statement: Select[Any], runs: int
              ) -> tuple[list[float], int]:
    """Seconds per run (after one untimed warm-up) and the rows the scan returned. Each
    run is a new session, as in ``scan``; the connection is checked out (pool pre-ping)
    before the clock starts, so only the query and fetching its ids are timed."""
    times: list[float] = []
    found = 0
    for i in range(runs + 1):
        with factory() as session:
            session.connection()
            t0 = time.perf_counter()
            found = len(session.scalars(statement).all())
            elapsed = time.perf_counter() - t0
        if i:
            times.append(elapsed)
    return times, found


def prepared_plan_counts(factory: sessionmaker[Session]) -> list[tuple[int, int]]:
    """(custom, generic) plan counts of the scans psycopg prepared server-side. Were there
    any, PostgreSQL could switch them to a generic plan (``risk_at <= $1`` of unknown
    selectivity) that EXPLAIN with the real ``now`` does not show. psycopg prepares a query
    on its 5th run in one connection, but its cache does not outlive the rollback that
    ends each session, so with a session per scan (as ``scan`` does) this stays empty."""
    with factory() as session:
        rows = session.execute(text(
            "SELECT custom_plans, generic_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%FROM sla_clocks%'"))
        return [(int(c), int(g)) for c, g in rows]


# --- database -------------------------------------------------------------------------------

@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database on the admin URL's server, dropped afterwards (as
    ``tests.support.postgres_database``, without pytest)."""
    import psycopg

    name = f"pdbench_{uuid.uuid4().hex[:12]}"
    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = conninfo.rsplit("/", 1)[0].removeprefix("postgresql://")
    try:
        yield f"postgresql+psycopg://{base}/{name}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per query")
    parser.add_argument("--hot-share", type=float, default=0.005,
                        help="share of clocks already at risk or due at 'now'")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--url", default=os.environ.get("POSTDESK_TEST_POSTGRES_URL",
                                                        DEFAULT_URL))
    args = parser.parse_args()
    now = datetime.now(UTC).replace(microsecond=0)
    failures: list[str] = []

    with fresh_database(args.url) as url:
        engine = make_engine(url)
        baseline_engine = make_engine(url, connect_args={"options": NO_INDEX_OPTIONS})
        try:
            t0 = time.perf_counter()
            upgrade(engine)
            t1 = time.perf_counter()
            build(engine, args.tickets, now, args.seed, args.hot_share)
            t2 = time.perf_counter()
            analyze(engine, vacuum=True)
            t3 = time.perf_counter()
            factory = make_session_factory(engine)
            baseline = make_session_factory(baseline_engine)
            with factory() as s:
                version = s.execute(text("SHOW server_version")).scalar_one()
                clocks = s.execute(text("SELECT count(*) FROM sla_clocks")).scalar_one()
                sizes = dict(s.execute(text(
                    "SELECT relname, pg_size_pretty(pg_relation_size(oid)) FROM pg_class "
                    "WHERE relname IN ('sla_clocks', 'ix_sla_clocks_due_running', "
                    "'ix_sla_clocks_risk_running')")).all())
                matching = {name: s.execute(text(
                    "SELECT count(*) FROM sla_clocks WHERE stopped_at IS NULL AND "
                    f"paused_since IS NULL AND {flag} IS NULL AND {col} <= :now"),
                    {"now": now}).scalar_one()
                    for name, flag, col in (("at_risk", "at_risk_at", "risk_at"),
                                            ("breached", "breached_at", "due_at"))}

            print(f"Breach scans on PostgreSQL {version}: {args.tickets:,} open tickets, "
                  f"{clocks:,} running clocks, now = {now.isoformat()}")
            print(f"setup: migrations {t1 - t0:.1f}s, load {t2 - t1:.1f}s, "
                  f"VACUUM ANALYZE {t3 - t2:.1f}s; sizes: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(sizes.items())))
            print(f"{args.runs} timed runs per query (after one warm-up); times in ms\n")
            header = (f"{'scan':<9} {'matching':>8} {'rows':>5} {'index best':>10} "
                      f"{'median':>8} {'seqscan best':>12} {'median':>8} {'× median':>9} "
                      f"{'× best':>7}  index used")
            print(header)
            plans: dict[str, tuple[list[str], list[str]]] = {}
            for name, (query, index) in SCANS.items():
                statement = query(now)
                fast, rows = time_scan(factory, statement, args.runs)
                slow, slow_rows = time_scan(baseline, statement, args.runs)
                assert rows == slow_rows, "baseline returned a different number of rows"
                with factory() as s:
                    indexed_plan = explain(s, statement, "(ANALYZE, BUFFERS)")
                with baseline() as s:
                    baseline_plan = explain(s, statement, "(ANALYZE, BUFFERS)")
                plans[name] = (indexed_plan, baseline_plan)
                used = uses_partial_index(indexed_plan, index)
                if not used:
                    failures.append(f"{name} scan does not use {index}")
                f_med, s_med = statistics.median(fast), statistics.median(slow)
                verdict = (f"yes, {index}" if used else
                           f"NO: {', '.join(sorted(plan_indexes(indexed_plan))) or 'no index'}")
                print(f"{name:<9} {matching[name]:>8,} {rows:>5} {_ms(min(fast)):>10} "
                      f"{_ms(f_med)} {_ms(min(slow)):>12} {_ms(s_med)} "
                      f"{s_med / f_med:>8.1f}x {min(slow) / min(fast):>6.1f}x  "
                      f"{verdict}")
            print("× = seqscan time / index time (higher: the index saves more).")
            counts = prepared_plan_counts(factory)
            print("server-side prepared scans (psycopg): "
                  + ("; ".join(f"{c} custom / {g} generic plans" for c, g in counts)
                     if counts else "none, each run is planned for its own 'now' as below"))
            for name, (indexed_plan, baseline_plan) in plans.items():
                print(f"\n--- {name}: EXPLAIN (ANALYZE, BUFFERS) ---")
                print("\n".join(indexed_plan))
                print(f"\n--- {name}, baseline (index scans off) ---")
                print("\n".join(baseline_plan))
        finally:
            engine.dispose()
            baseline_engine.dispose()
    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print("OK: both scans use their partial index")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
