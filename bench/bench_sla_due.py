"""How many SLA due dates per second ``BusinessCalendar.add`` computes.

Run: ``.venv/bin/python bench/bench_sla_due.py [--n 20000] [--repeat 5] [--seed 1]``

Targets 1h, 5h and 10d on the UK office calendar (Europe/London, Mon-Fri 08:00-18:00,
England bank holidays, closed 24 Dec 2026) from random minute-resolution starts over
2026-2028. The baseline, measured in the same run on the same starts, is ``add`` on an
always-open calendar, which is a plain ``start + timedelta``; ratios are against it so the
numbers compare across machines. Also shown, for scale: a bare ``start + timedelta`` with
no calendar at all, and one pass on a fresh calendar (empty caches: holidays and day
intervals computed on the way). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Runnable as a script from the repository root: make `workflow` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from postdesk.workflow.rules.calendar import BusinessCalendar  # noqa: E402
from postdesk.workflow.rules.durations import Duration, parse_duration  # noqa: E402


def uk_office() -> BusinessCalendar:
    return BusinessCalendar(
        timezone="Europe/London",
        hours={day: "08:00-18:00" for day in ("mon", "tue", "wed", "thu", "fri")},
        holidays_country="GB",
        holidays_subdiv="ENG",
        closed=["2026-12-24"],
    )


def random_starts(n: int, seed: int) -> list[datetime]:
    rng = random.Random(seed)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    minutes = int((datetime(2029, 1, 1, tzinfo=UTC) - first).total_seconds() // 60)
    return [first + timedelta(minutes=rng.randrange(minutes)) for _ in range(n)]


def best_rate(run: Callable[[], None], n: int, repeat: int) -> float:
    """Operations per second of the fastest of `repeat` passes (least disturbed by noise)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="starts per pass")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best one counts")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    starts = random_starts(args.n, args.seed)
    uk = uk_office()
    always = BusinessCalendar.always()
    one_hour = parse_duration("1h")
    rows: list[tuple[str, float]] = []

    def measure(label: str, cal: BusinessCalendar, duration: Duration) -> float:
        add = cal.add

        def run() -> None:
            for start in starts:
                add(start, duration)

        rate = best_rate(run, len(starts), args.repeat)
        rows.append((label, rate))
        return rate

    # Cold: a fresh calendar, one pass; holidays and day intervals are built as met.
    cold = uk_office()
    t0 = time.perf_counter()
    for start in starts:
        cold.add(start, one_hour)
    rows.append(("uk 1h, fresh calendar (1 pass)", len(starts) / (time.perf_counter() - t0)))

    baseline = measure("baseline: always-open add 1h", always, one_hour)
    plain = timedelta(hours=1)

    def bare() -> None:
        for start in starts:
            start + plain

    rows.append(("bare start + timedelta", best_rate(bare, len(starts), args.repeat)))
    for target in ("1h", "5h", "10d"):
        measure(f"uk {target}", uk, parse_duration(target))

    print(
        f"SLA due dates: {len(starts):,} random starts 2026-2028, best of {args.repeat} passes, "
        f"Python {sys.version.split()[0]}"
    )
    width = max(len(label) for label, _ in rows)
    print(f"{'computation':<{width}}  {'per second':>12}  {'µs each':>8}  {'× baseline':>10}")
    for label, rate in rows:
        print(f"{label:<{width}}  {rate:>12,.0f}  {1e6 / rate:>8.2f}  {baseline / rate:>10.1f}")
    print("× baseline: how many times longer than the always-open add (higher is slower).")


if __name__ == "__main__":
    main()
