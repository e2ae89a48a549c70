"""The surrogate learns a known capacity rule from synthetic 'twin runs' and answers fast."""
from __future__ import annotations

import numpy as np
import pytest

from twinbench.advisor import surrogate as sg


def synthetic_samples(n: int, seed: int) -> list[sg.Sample]:
    """Ground truth: capacity 3000 tok/s × sqrt(hot share); starving iff offered > capacity."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        n_ad = int(rng.integers(2, 60))
        rates = tuple(rng.choice([1.6, 0.8, 0.4, 0.1], size=n_ad) * rng.uniform(0.5, 2.0))
        ranks = tuple(int(r) for r in rng.choice([8, 16, 32], size=n_ad))
        load = sg.ReplicaLoad(rates, ranks, mean_prompt=300.0, mean_output=150.0)
        slots = int(rng.integers(1, n_ad + 1))
        x = sg.features(load, slots, kv_capacity_tokens=2e5)
        hot = x[sg.FEATURES.index("hot_share")]
        offered = sum(rates) * 150.0
        cap = 3000.0 * np.sqrt(hot)
        out.append(sg.Sample(x, min(offered, cap), offered > cap, {"workload": k // 4}))
    return out


@pytest.mark.parametrize("kind", ["linear", "trees"])
def test_surrogate_learns_the_rule(kind):
    if kind == "trees":
        pytest.importorskip("sklearn")
    samples = synthetic_samples(600, seed=1)
    starving_share = np.mean([s.starving for s in samples])
    assert 0.25 < starving_share < 0.75  # both verdicts present, so accuracy means something
    train, held = sg.split(samples, holdout=0.25, seed=0)
    assert {s.meta["workload"] for s in train}.isdisjoint({s.meta["workload"] for s in held})
    model = sg.fit(train, kind=kind)
    score = sg.score(model, held)
    assert score.starvation_accuracy >= 0.85
    assert score.throughput_smape < 25.0
    # a model that ignores the features does much worse on the same held-out runs
    mean_t = np.mean([s.throughput for s in train])
    assert sg.smape(np.full(len(held), mean_t), [s.throughput for s in held]) > \
        score.throughput_smape
    assert set(model.explain()["log_throughput"]) == set(sg.FEATURES)


def test_best_slots_prefers_a_non_starving_choice():
    samples = synthetic_samples(600, seed=2)
    model = sg.fit(samples, kind="linear")
    load = sg.ReplicaLoad(tuple([1.6] * 4 + [0.05] * 30), tuple([16] * 34), 300.0, 150.0)
    slots, tput, starving = sg.best_slots(model, load, [1, 4, 8, 16, 34], [2e5] * 5)
    assert not starving and slots is not None
    assert slots >= 4  # one slot cannot hold the four hot adapters


def test_smape_definition():
    assert sg.smape([100.0, 0.0], [50.0, 0.0]) == pytest.approx((100 * 50 / 75 + 0) / 2)
