"""Coarse-to-fine 2-D search on synthetic objectives whose optimum is known by brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest

from twinbench.advisor.search import (Evaluation, axis_lattice, choose_best, coarse_to_fine,
                                      feasibility_frontier, rank)


def make_objective(seed: int):
    """Throughput grows with served adapters x until a starvation frontier h(y) that first
    rises with GPU slots y (fewer swaps) then falls (slots eat KV memory); a small per-slot
    cost makes the best y unique. Same shape as the adapter advisor's surface."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(3.0, 12.0)
    y0 = rng.uniform(5.0, 40.0)
    cost = rng.uniform(0.001, 0.01)

    def frontier(y: int) -> float:
        return c * y * math.exp(-y / y0)

    def evaluate(points):
        return [Evaluation((x, y), value=x * (1.0 - cost * y), feasible=x <= frontier(y))
                for x, y in points]

    return evaluate


def brute_force(evaluate, x_range, y_range, exclude):
    pts = [(x, y) for x in range(x_range[0], x_range[1] + 1)
           for y in range(y_range[0], y_range[1] + 1) if not exclude(x, y)]
    best = rank(evaluate(pts))[0]
    return best, len(pts)


def slots_not_above_adapters(x, y):
    return "max_loras > max_cpu_loras" if y > x else None


@pytest.mark.parametrize("seed", range(12))
def test_search_finds_the_brute_force_optimum(seed):
    evaluate = make_objective(seed)
    xr, yr = (1, 400), (1, 64)
    expected, grid_size = brute_force(evaluate, xr, yr, slots_not_above_adapters)
    assert expected.feasible
    result = coarse_to_fine(evaluate, xr, yr, exclude=slots_not_above_adapters)
    assert result.best is not None
    assert result.best.point == expected.point
    assert result.runs < grid_size / 20  # coarse to fine, not the whole grid
    assert all(p[1] <= p[0] for p in result.evaluations)  # excluded points never run


def test_memory_exclusion_moves_the_optimum():
    """A memory cap on slots (slots x rank <= budget) must be respected, never evaluated."""
    evaluate = make_objective(3)
    xr, yr = (1, 400), (1, 64)

    def exclude(x, y):
        return slots_not_above_adapters(x, y) or ("KV memory" if y * 32 > 320 else None)

    expected, _ = brute_force(evaluate, xr, yr, exclude)
    result = coarse_to_fine(evaluate, xr, yr, exclude=exclude)
    assert result.best.point == expected.point
    assert all(y <= 10 for _, y in result.evaluations)
    assert any(why == "KV memory" for why in result.excluded.values())


def test_no_feasible_point_gives_no_best():
    def evaluate(points):
        return [Evaluation(p, 1.0, False) for p in points]

    assert coarse_to_fine(evaluate, (1, 50), (1, 8)).best is None


def test_lattice_keeps_both_bounds():
    assert axis_lattice(1, 10, 4) == [1, 5, 9, 10]
    assert axis_lattice(3, 3, 5) == [3]


@pytest.mark.parametrize("threshold", [1, 2, 37, 199, 200])
def test_frontier_bisection(threshold):
    calls = []

    def ok(x):
        calls.append(x)
        return x <= threshold

    good, bad = feasibility_frontier(ok, 1, 200, known={1: True} if threshold >= 1 else {})
    assert good == threshold
    assert bad == (None if threshold == 200 else threshold + 1)
    assert len(calls) <= 10  # bisection, not a scan


def test_frontier_when_nothing_fits():
    assert feasibility_frontier(lambda x: False, 5, 50) == (None, 5)


def test_near_ties_go_to_more_adapters_and_fewer_slots():
    evs = [Evaluation((40, 39), 580.4, True), Evaluation((40, 3), 580.0, True),
           Evaluation((39, 2), 579.9, True), Evaluation((41, 3), 700.0, False)]
    assert choose_best(evs).point == (40, 39)
    assert choose_best(evs, tie_tolerance=0.01).point == (40, 3)
    assert choose_best([Evaluation((1, 1), 5.0, False)], 0.01) is None
