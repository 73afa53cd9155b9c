"""The benchmarks' interval for the median of a ratio measured in rounds
(``bench/benchlib.median_interval``): what BENCHMARKS.md calls a target met "reliably" on
a drifting machine is that interval's low end clearing it, so the interval is checked here
against the binomial distribution it rests on."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHLIB = Path(__file__).resolve().parent.parent / "bench" / "benchlib.py"


@pytest.fixture(scope="module")
def benchlib() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchlib_under_test", BENCHLIB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def binomial_coverage(n: int, k: int) -> float:
    """How often the k-th smallest and k-th largest of n draws straddle the median."""
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / math.pow(2, n)


def test_five_rounds_are_too_few_for_a_95_percent_interval(benchlib: ModuleType) -> None:
    assert benchlib.median_interval([1.5, 1.6, 1.7, 1.8, 1.9]) is None
    low, high, coverage = benchlib.median_interval([1.5, 1.6, 1.7, 1.8, 1.9, 2.0])
    assert (low, high) == (1.5, 2.0)
    assert coverage == pytest.approx(binomial_coverage(6, 1))


def test_sixteen_rounds_give_the_fourth_smallest_and_fourth_largest(
        benchlib: ModuleType) -> None:
    rounds = [1.50, 1.97, 1.51, 1.62, 2.02, 1.92, 1.53, 1.85,
              1.41, 1.79, 1.79, 1.94, 1.50, 1.62, 1.50, 1.41]
    low, high, coverage = benchlib.median_interval(rounds)
    ordered = sorted(rounds)
    assert (low, high) == (ordered[3], ordered[12])
    assert coverage == pytest.approx(binomial_coverage(16, 4))
    assert coverage >= 0.95 > binomial_coverage(16, 5)


def test_the_interval_is_the_narrowest_that_keeps_the_confidence(
        benchlib: ModuleType) -> None:
    for n in range(6, 60):
        values = [float(i) for i in range(n)]
        low, high, coverage = benchlib.median_interval(values, confidence=0.9)
        k = int(low) + 1
        assert high == n - k
        assert coverage == pytest.approx(binomial_coverage(n, k)) and coverage >= 0.9
        assert k == n // 2 or binomial_coverage(n, k + 1) < 0.9


def test_the_interval_holds_the_true_median_about_as_often_as_it_claims(
        benchlib: ModuleType) -> None:
    draw = random.Random(11)
    trials, held, claimed = 2000, 0, []
    for _ in range(trials):
        # a skewed ratio around a true median of 1.6
        rounds = [1.6 * math.exp(draw.gauss(0, 0.12)) for _ in range(12)]
        low, high, coverage = benchlib.median_interval(rounds)
        claimed.append(coverage)
        held += low <= 1.6 <= high
    assert held / trials == pytest.approx(sum(claimed) / trials, abs=0.02)


def test_the_summary_names_the_interval_from_six_rounds_on(benchlib: ModuleType) -> None:
    assert "confidence" not in benchlib.rounds_summary([1.5, 1.6, 1.7], unit="x")
    summary = benchlib.rounds_summary([1.5, 1.6, 1.7, 1.8, 1.9, 2.0], unit="x")
    assert summary.startswith("median 1.75x over 6 rounds")
    assert summary.endswith("the median lies in 1.50-2.00x with 96.9% confidence")
