"""Sweep `max_num_seqs`: a coarse geometric pass, then refinement where the answer can move.

`sweep_batch(evaluate, rule, b_max)` knows nothing about twins or servers: `evaluate(batches)`
returns one metrics dict (vLLM key names) per batch limit. The coarse pass samples
1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... (powers of two and their 1.5×), always B = 1 (the
efficiency rule's T(1)), B = 32 (its ITL reference) and `b_max`. Then, as long as the rule's
answer or the Kneedle knee lies between two sampled batches more than one apart, up to
`parallel` batches inside that bracket are evaluated (k-section), so the answer is exact to
one batch on a monotone curve with O(log) extra points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from twinbench.advisor.search import interior
from twinbench.advisor.batch_rules import (THROUGHPUT, BatchCurve, Choice, LinearStepModel,
                                           MEAN_ITL, Rule, kneedle)


def coarse_batches(b_max: int, b_min: int = 1, must: Sequence[int] = (32,)) -> list[int]:
    values = {b_min, b_max}
    p = 1
    while p <= b_max:
        values.update({p, p + p // 2} if p >= 2 else {p})
        p *= 2
    values.update(must)
    return sorted(v for v in values if b_min <= v <= b_max)


@dataclass
class BatchSweep:
    curve: BatchCurve
    choice: Choice
    knee: Choice
    linear_fit: LinearStepModel | None
    evaluated: int

    def to_dict(self) -> dict:
        return {
            "batch": self.curve.batch.tolist(),
            "metrics": {k: [None if np.isnan(x) else float(x) for x in v]
                        for k, v in self.curve.metrics.items()},
            "choice": {"max_num_seqs": self.choice.batch, "rule": self.choice.reason},
            "kneedle_knee": self.knee.batch,
            "linear_fit_ms": None if self.linear_fit is None else
            {"a": self.linear_fit.a_ms, "b_per_seq": self.linear_fit.b_ms},
            "points_evaluated": self.evaluated,
        }


def sweep_batch(evaluate: Callable[[list[int]], Sequence[dict]], rule: Rule, b_max: int, *,
                b_min: int = 1, parallel: int = 2, max_rounds: int = 20) -> BatchSweep:
    points: dict[int, dict] = {}

    def run(batches: list[int]) -> None:
        todo = [b for b in dict.fromkeys(batches) if b not in points]
        for b, metrics in zip(todo, evaluate(todo)):
            points[b] = dict(metrics)

    run(coarse_batches(b_max, b_min))
    for _ in range(max_rounds):
        curve = BatchCurve.from_points(points)
        brackets = [c.bracket for c in (rule.choose(curve), kneedle(curve.batch,
                                                                     curve[THROUGHPUT]))]
        todo = [b for br in brackets if br for b in interior(*br, parallel)]
        todo = [b for b in todo if b not in points]
        if not todo:
            break
        run(todo)
    curve = BatchCurve.from_points(points)
    fit = None
    if MEAN_ITL in curve.metrics and np.isfinite(curve[MEAN_ITL]).sum() >= 2:
        ok = np.isfinite(curve[MEAN_ITL])
        fit = LinearStepModel.fit(curve.batch[ok], curve[MEAN_ITL][ok])
    return BatchSweep(curve, rule.choose(curve), kneedle(curve.batch, curve[THROUGHPUT]), fit,
                      len(points))
