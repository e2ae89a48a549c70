"""Greedy packing: whatever the surrogate guesses, the twin's verdicts decide the packing."""
from __future__ import annotations

import numpy as np
import pytest

from twinbench.advisor.placement import greedy_pack


def prefix_packing(rates, capacity):
    """Independent reference: fill replicas in order until the next adapter overflows."""
    out, cur, load = [], [], 0.0
    for i, r in enumerate(rates):
        if cur and load + r > capacity:
            out.append(cur)
            cur, load = [], 0.0
        cur.append(i)
        load += r
    return out + ([cur] if cur else [])


@pytest.mark.parametrize("guess", ["exact", "low", "high", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packing_follows_the_twin(guess, seed):
    rng = np.random.default_rng(seed)
    rates = sorted(rng.choice([1.6, 0.8, 0.4, 0.1], size=40).tolist(), reverse=True)
    capacity = 5.0
    calls = []

    def twin_fit(idx, slots):
        calls.append(len(idx))
        return sum(rates[i] for i in idx) <= capacity

    def predict_fit(rest):
        exact = len(prefix_packing([rates[i] for i in rest], capacity)[0])
        return {"exact": exact, "low": max(1, exact // 3), "high": exact * 3,
                "none": None}[guess]

    placed, ok = greedy_pack(list(range(40)), predict_fit=predict_fit, twin_fit=twin_fit,
                             choose_slots=lambda idx: len(idx), max_replicas=40)
    assert ok
    assert [idx for idx, _ in placed] == prefix_packing(rates, capacity)
    if guess == "exact":  # a right guess costs two twin runs per replica (fits, +1 starves)
        assert len(calls) <= 2 * len(placed)


def test_not_enough_gpus_and_an_adapter_too_big():
    rates = [3.0, 3.0, 3.0]
    fit = lambda idx, s: sum(rates[i] for i in idx) <= 4.0  # noqa: E731
    placed, ok = greedy_pack([0, 1, 2], predict_fit=lambda r: 1, twin_fit=fit,
                             choose_slots=len, max_replicas=2)
    assert not ok and len(placed) == 2
    placed, ok = greedy_pack([0], predict_fit=lambda r: 1,
                             twin_fit=lambda idx, s: False, choose_slots=len, max_replicas=4)
    assert not ok and placed == []
