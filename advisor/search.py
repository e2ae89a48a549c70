"""Coarse-to-fine search over a 2-D integer grid with a feasibility constraint.

The adapter advisor's question is "which (served adapters, GPU slots) pair gives the most
throughput without starvation". Each point costs a twin run, so we cannot evaluate the
whole grid: we evaluate a coarse lattice, then bisect each lattice row's starvation frontier
and refine the slots axis around the best frontier point (see `coarse_to_fine`). Points excluded before any run (slots above served
adapters, LoRA slots that leave too little KV memory) are never evaluated.

The search never looks at the objective's form: it receives `evaluate(points)`, a batch
function, so a level's points run in parallel on whatever executor the caller uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

Point = tuple[int, int]


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one grid point: objective value and whether it meets the constraint."""

    point: Point
    value: float
    feasible: bool
    info: dict = field(default_factory=dict, compare=False)


@dataclass
class SearchResult:
    best: Evaluation | None
    evaluations: dict[Point, Evaluation]
    excluded: dict[Point, str]          # point -> why it was never run
    levels: list[tuple[int, int]]       # (x step, y step) of each level, coarse first

    @property
    def runs(self) -> int:
        return len(self.evaluations)


def axis_lattice(lo: int, hi: int, step: int) -> list[int]:
    """lo, lo+step, ... and always hi: the bounds are where optima of monotone objectives sit."""
    values = list(range(lo, hi + 1, max(1, step)))
    if values[-1] != hi:
        values.append(hi)
    return values


def coarse_step(lo: int, hi: int, points: int) -> int:
    return max(1, math.ceil((hi - lo) / max(1, points - 1)))


def _better(a: Evaluation, b: Evaluation | None) -> bool:
    """Feasible beats infeasible; then higher value; ties go to the smaller point (cheaper)."""
    if b is None:
        return True
    if a.feasible != b.feasible:
        return a.feasible
    if a.value != b.value:
        return a.value > b.value
    return a.point < b.point


def rank(evaluations: Iterable[Evaluation]) -> list[Evaluation]:
    """Best first, by the same order as `_better`."""
    return sorted(evaluations, key=lambda e: (not e.feasible, -e.value, e.point))


def coarse_to_fine(evaluate: Callable[[list[Point]], Sequence[Evaluation]],
                   x_range: tuple[int, int], y_range: tuple[int, int], *,
                   exclude: Callable[[int, int], str | None] = lambda x, y: None,
                   coarse_points: int = 7, parallel: int = 2,
                   tie_tolerance: float = 0.0,
                   known: Iterable[Evaluation] = ()) -> SearchResult:
    """Maximise `value` over feasible integer points of x_range × y_range (inclusive).

    Assumes the constraint is monotone in x (feasible up to a frontier h(y): more served
    adapters only starve more) and the value grows with x on the feasible set, so the best
    point of each y sits on its frontier, and the frontier's value is unimodal in y.
    1. coarse: a lattice of about `coarse_points` values per axis (it also draws the surface);
    2. fine in x: for each lattice y, bisect the frontier between the lattice points that
       bracket it (all y of a round run together, so the executor stays busy);
    3. fine in y: around the best y, trace the frontier at up to `parallel` new y on each side
       between its sampled neighbours, until they are adjacent.
    A plain pattern search stalls on such surfaces: the optimum lies on a diagonal ridge.
    `exclude(x, y)` returns a reason to skip a point without running it, or None.
    `tie_tolerance`: see `choose_best`. `known`: points already run (reused, not rerun).
    """
    (x0, x1), (y0, y1) = x_range, y_range
    if x0 > x1 or y0 > y1:
        raise ValueError(f"empty search range x={x_range} y={y_range}")
    sx, sy = coarse_step(x0, x1, coarse_points), coarse_step(y0, y1, coarse_points)
    result = SearchResult(best=None, evaluations={e.point: e for e in known}, excluded={},
                          levels=[(sx, sy)])

    def allowed(x: int, y: int) -> bool:
        p = (x, y)
        if p in result.evaluations:
            return True
        if p not in result.excluded:
            why = exclude(x, y)
            if not why:
                return True
            result.excluded[p] = why
        return False

    def run(points: Iterable[Point]) -> None:
        todo = [p for p in dict.fromkeys(points) if p not in result.evaluations
                and x0 <= p[0] <= x1 and y0 <= p[1] <= y1 and allowed(*p)]
        if todo:
            for e in evaluate(todo):
                result.evaluations[e.point] = e

    def trace_frontiers(ys: Sequence[int]) -> None:
        xs_at = {y: [x for x in range(x0, x1 + 1) if allowed(x, y)] for y in ys}
        while True:
            todo = []
            for y, xs in xs_at.items():
                if xs:
                    nxt = _next_frontier_probe(xs, y, result.evaluations)
                    if nxt is not None:
                        todo.append((nxt, y))
            if not todo:
                return
            run(todo)

    run((x, y) for x in axis_lattice(x0, x1, sx) for y in axis_lattice(y0, y1, sy))
    traced = axis_lattice(y0, y1, sy)
    trace_frontiers(traced)
    while True:
        best_y = _best_by_y(result.evaluations, traced)
        if best_y is None:
            break
        i = traced.index(best_y)
        new = []
        if i > 0:
            new += interior(traced[i - 1], best_y, parallel)
        if i + 1 < len(traced):
            new += interior(best_y, traced[i + 1], parallel)
        if not new:
            break
        result.levels.append((1, max(b - a for a, b in zip(traced, traced[1:]))))
        trace_frontiers(new)
        traced = sorted(set(traced) | set(new))
    result.best = choose_best(result.evaluations.values(), tie_tolerance)
    return result


def choose_best(evaluations: Iterable[Evaluation], tie_tolerance: float = 0.0) -> Evaluation | None:
    """The best feasible point; with a tolerance, any feasible point within that relative
    distance of the best value counts as tied, and ties go to the largest x, then the
    smallest y (serve more adapters, spend fewer GPU slots: throughput differences that
    small are within the twin's run-to-run workload noise)."""
    feasible = [e for e in evaluations if e.feasible]
    if not feasible:
        return None
    top = max(e.value for e in feasible)
    tied = [e for e in feasible if e.value >= top - abs(top) * tie_tolerance]
    if tie_tolerance <= 0:
        return rank(tied)[0]
    return min(tied, key=lambda e: (-e.point[0], e.point[1]))


def interior(lo: int, hi: int, k: int) -> list[int]:
    """Up to k distinct integers strictly inside (lo, hi), evenly spread."""
    if hi - lo - 1 <= k:
        return list(range(lo + 1, hi))
    return sorted({lo + round((hi - lo) * (i + 1) / (k + 1)) for i in range(k)} - {lo, hi})


def _next_frontier_probe(xs: list[int], y: int, evaluations: dict[Point, Evaluation]) -> int | None:
    """Next x to run at this y to pin its frontier (largest feasible x), or None when pinned."""
    known = [(i, evaluations[(x, y)].feasible) for i, x in enumerate(xs) if (x, y) in evaluations]
    good = max((i for i, ok in known if ok), default=None)
    bad = min((i for i, ok in known if not ok and (good is None or i > good)), default=None)
    if good is None:
        if bad == 0:
            return None  # nothing feasible at this y
        hi = bad if bad is not None else len(xs)
        return xs[0] if hi > 0 and (xs[0], y) not in evaluations else xs[(hi - 1) // 2]
    if bad is None:
        return None if good == len(xs) - 1 else xs[-1]
    return None if bad - good <= 1 else xs[(good + bad) // 2]


def _best_by_y(evaluations: dict[Point, Evaluation], ys: Sequence[int]) -> int | None:
    best = rank(e for e in evaluations.values() if e.feasible and e.point[1] in set(ys))
    return best[0].point[1] if best else None


def feasibility_frontier(is_feasible: Callable[[int], bool], lo: int, hi: int,
                         known: dict[int, bool] | None = None) -> tuple[int | None, int | None]:
    """(largest feasible, smallest infeasible) x in [lo, hi] for a constraint monotone in x.

    Feasibility must hold below some x and fail above it (more adapters only starve more).
    Uses results already `known` and bisects the rest. (None, lo) when even lo fails;
    (hi, None) when all of [lo, hi] is feasible.
    """
    known = dict(known or {})

    def check(x: int) -> bool:
        if x not in known:
            known[x] = bool(is_feasible(x))
        return known[x]

    good = max((x for x, ok in known.items() if ok and lo <= x <= hi), default=None)
    bad = min((x for x, ok in known.items() if not ok and lo <= x <= hi
               and (good is None or x > good)), default=None)
    if good is None:
        if check(lo):
            good = lo
        else:
            return None, lo
    if bad is None:
        if check(hi):
            return hi, None
        bad = hi
    while bad - good > 1:
        mid = (good + bad) // 2
        if check(mid):
            good = mid
        else:
            bad = mid
    return good, bad
