"""Synthetic workloads: arrival processes, per-adapter streams, length models, determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest

from twinbench.traces import bundled, generate, load_workload
from twinbench.traces.arrivals import arrival_times
from twinbench.traces.core import TraceError

FIXED = {"prompt": 100, "output": 10}


def cv(t: np.ndarray) -> float:
    g = np.diff(t)
    return float(g.std() / g.mean())


def test_same_seed_same_trace_other_seed_other_trace():
    wl = {"requests": 2000, "arrival": {"process": "poisson", "rate": 5.0},
          "adapters": {"count": 8, "popularity": "zipf:1.0"},
          "lengths": {"prompt": {"dist": "lognormal", "mean": 500, "sigma": 0.5},
                      "output": {"dist": "uniform", "min": 5, "max": 50}}}
    a, b, c = generate(wl, seed=1), generate(wl, seed=1), generate(wl, seed=2)
    for col in ("arrival_s", "adapter_idx", "prompt_tokens", "output_tokens"):
        assert np.array_equal(getattr(a, col), getattr(b, col))
        assert not np.array_equal(getattr(a, col), getattr(c, col))
    assert a.meta["seed"] == 1 and a.meta["workload"] == wl


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_burstiness_has_vllm_meaning(burstiness):
    rng = np.random.default_rng(0)
    t = arrival_times({"process": "gamma", "rate": 20.0, "burstiness": burstiness}, rng,
                      count=40_000)
    assert (len(t) - 1) / (t[-1] - t[0]) == pytest.approx(20.0, rel=0.03)
    assert cv(t) == pytest.approx(1 / np.sqrt(burstiness), rel=0.05)


def test_poisson_and_constant():
    rng = np.random.default_rng(0)
    t = arrival_times({"process": "poisson", "rate": 3.0}, rng, duration_s=10_000)
    assert len(t) == pytest.approx(30_000, rel=0.03)
    assert t.max() < 10_000 and cv(t) == pytest.approx(1.0, rel=0.05)
    c = arrival_times({"process": "constant", "rate": 4.0}, rng, duration_s=10)
    assert np.allclose(c, np.arange(1, 40) * 0.25)


def test_piecewise_rates_and_ramps_give_the_integral_number_of_arrivals():
    spec = {"process": "piecewise", "segments": [
        {"duration_s": 1000, "rate": 2.0},
        {"duration_s": 1000, "rate_from": 2.0, "rate_to": 10.0},
        {"duration_s": 1000, "rate": 0.0}]}
    t = arrival_times(spec, np.random.default_rng(3), duration_s=3000)
    first = ((t >= 0) & (t < 1000)).sum()
    ramp_early = ((t >= 1000) & (t < 1500)).sum()   # integral of 2->6: 2000
    ramp_late = ((t >= 1500) & (t < 2000)).sum()    # integral of 6->10: 4000
    assert first == pytest.approx(2000, rel=0.08)
    assert ramp_early == pytest.approx(2000, rel=0.08)
    assert ramp_late == pytest.approx(4000, rel=0.06)
    assert ((t >= 2000)).sum() == 0


def test_seed_paper_workload_per_adapter_streams():
    wl = load_workload(bundled("paper_workload"))
    assert wl.per_adapter_streams
    t = generate(wl, seed=0)
    rates = {a.name: a.rate for a in wl.adapters}
    assert [a.rank for a in t.adapters] == [8, 16, 32] * 4
    assert set(rates.values()) == {1.6, 0.8, 0.4}
    counts = np.bincount(t.adapter_idx, minlength=12)
    for k, a in enumerate(t.adapters):
        expected = rates[a.name] * 300
        assert abs(counts[k] - expected) < 5 * np.sqrt(expected)
        mine = t.arrival_s[t.adapter_idx == k]
        assert cv(mine) == pytest.approx(1.0, abs=0.35)  # each stream is its own Poisson
    assert t.arrival_s.max() < 300
    src = load_workload(bundled("paper_workload")).lengths["source"]
    assert src == "bundled:azure_conv"


def test_length_models():
    wl = {"requests": 20_000, "arrival": {"process": "poisson", "rate": 1.0},
          "lengths": {"prompt": {"dist": "lognormal", "mean": 800, "sigma": 0.6},
                      "output": {"dist": "discrete", "values": [10, 20], "weights": [3, 1]}}}
    t = generate(wl)
    assert t.prompt_tokens.mean() == pytest.approx(800, rel=0.03)
    assert np.mean(t.output_tokens == 10) == pytest.approx(0.75, abs=0.02)
    u = generate({**wl, "lengths": {"prompt": {"dist": "uniform", "min": 3, "max": 5},
                                    "output": {"dist": "fixed", "value": 7}}})
    assert set(u.prompt_tokens.tolist()) == {3, 4, 5} and set(u.output_tokens.tolist()) == {7}


def test_empirical_lengths_are_pairs_of_the_source(tmp_path):
    from twinbench.traces import load
    src = load(bundled("azure_code"))
    pairs = set(zip(src.prompt_tokens.tolist(), src.output_tokens.tolist()))
    wl = {"requests": 500, "arrival": {"process": "poisson", "rate": 1.0},
          "lengths": {"dist": "empirical", "source": "bundled:azure_code"}}
    t = generate(wl)
    assert set(zip(t.prompt_tokens.tolist(), t.output_tokens.tolist())) <= pairs
    # relative sources resolve against the workload file's folder
    (tmp_path / "lens.csv").write_text("input_len,output_len\n11,3\n")
    (tmp_path / "w.workload.json").write_text(json.dumps(
        {**wl, "lengths": {"dist": "empirical", "source": "lens.csv"}}))
    t2 = generate(load_workload(str(tmp_path / "w.workload.json")))
    assert set(t2.prompt_tokens.tolist()) == {11}


def test_shares_and_base_share():
    wl = {"requests": 30_000, "arrival": {"process": "poisson", "rate": 10.0},
          "adapters": [{"name": "a", "rank": 8, "share": 3}, {"name": "b", "share": 1}],
          "base_share": 1, "lengths": FIXED}
    t = generate(wl)
    freq = np.bincount(t.adapter_idx + 1, minlength=3) / len(t)
    assert freq == pytest.approx([0.2, 0.6, 0.2], abs=0.015)
    assert t.adapters[0].rank == 8 and t.adapters[1].rank == 16


@pytest.mark.parametrize("bad,msg", [
    ({"duration_s": 1, "lengths": FIXED, "color": 1}, "unknown key"),
    ({"lengths": FIXED, "arrival": {"process": "poisson", "rate": 1}}, "duration_s or requests"),
    ({"duration_s": 1, "lengths": FIXED,
      "adapters": [{"name": "a", "rate": 1}, {"name": "b", "share": 1}]}, "either every"),
    ({"duration_s": 1, "lengths": FIXED, "arrival": {"process": "zigzag", "rate": 1}},
     "unknown arrival process"),
    ({"duration_s": 100, "lengths": {"prompt": {"dist": "beta"}, "output": 1},
      "arrival": {"process": "poisson", "rate": 1}}, "unknown length distribution"),
    ({"duration_s": 1, "lengths": FIXED, "arrival": {"process": "poisson"}}, "rate"),
])
def test_invalid_workloads_say_what_is_wrong(bad, msg):
    with pytest.raises(TraceError, match=msg):
        generate(bad)


def test_adapter_overrides_its_own_lengths_and_process():
    wl = {"duration_s": 2000, "arrival": {"process": "poisson"},
          "adapters": [{"name": "short", "rate": 2.0, "lengths": {"prompt": 5, "output": 1}},
                       {"name": "steady", "rate": 1.0, "arrival": {"process": "constant"}}],
          "lengths": {"prompt": 500, "output": 50}}
    t = generate(wl)
    short, steady = t.adapter_idx == 0, t.adapter_idx == 1
    assert set(t.prompt_tokens[short].tolist()) == {5}
    assert set(t.prompt_tokens[steady].tolist()) == {500}
    assert np.allclose(np.diff(t.arrival_s[steady]), 1.0)
    assert cv(t.arrival_s[short]) == pytest.approx(1.0, rel=0.1)
