"""Statistics helpers: NumPy-identical order statistics, Mann-Kendall, SMAPE, the sketch."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from twinbench.reports.sketch import QuantileSketch
from twinbench.reports.stats import (describe_ms, mann_kendall_upward, order_statistics,
                                     percentile_word, smape, smape_paper)


def test_order_statistics_equal_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    ps = (0, 1, 5, 33.3, 50, 90, 95, 99, 99.9, 100)
    for trial in range(150):
        n = int(rng.integers(1, 400))
        v = [rng.random(n), rng.lognormal(0, 2, n), rng.integers(0, 4, n) * 0.1][trial % 3]
        med, pcts = order_statistics(v, ps)
        assert med == np.median(v)
        assert pcts == [np.percentile(v, p) for p in ps]


def test_describe_keys_and_empty():
    d = describe_ms("ttft", np.array([0.001, 0.002, 0.004]), (50, 99.9))
    assert list(d) == ["mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p50_ttft_ms",
                       "p99.9_ttft_ms"]
    assert d["median_ttft_ms"] == 2.0
    assert describe_ms("itl", np.empty(0))["p99_itl_ms"] is None
    assert percentile_word(99.0) == "99" and percentile_word(99.9) == "99.9"


def _brute_s(x):
    return sum(np.sign(x[j] - x[i]) for i, j in itertools.combinations(range(len(x)), 2))


def test_mann_kendall_s_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(30):
        x = rng.integers(0, 6, int(rng.integers(3, 40))).astype(float)
        t = mann_kendall_upward(x)
        assert t.s == _brute_s(x)


def test_mann_kendall_pairwise_and_tau_paths_agree(monkeypatch):
    from scipy.stats import norm

    from twinbench.reports import stats
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=600) + np.linspace(0, 0.4, 600), 1)  # ties and a weak trend
    direct = mann_kendall_upward(x)
    monkeypatch.setattr(stats, "_MK_PAIRWISE", 10)  # force the O(n log n) Kendall-tau path
    via_tau = mann_kendall_upward(x)
    assert direct.s == via_tau.s and direct.z == via_tau.z
    assert direct.p_value == pytest.approx(float(norm.sf(direct.z)), rel=1e-12)


def test_mann_kendall_detects_trend_and_not_noise():
    rng = np.random.default_rng(2)
    noise = rng.normal(size=300)
    assert mann_kendall_upward(noise).p_value > 0.01
    trend = noise + np.linspace(0, 3, 300)
    assert mann_kendall_upward(trend).p_value < 1e-6
    assert mann_kendall_upward(-trend).p_value > 0.99  # one-sided: downward is not starvation
    assert mann_kendall_upward(np.ones(10)).p_value == 1.0
    assert mann_kendall_upward(np.ones(2)) is None


def test_smape_conventions():
    assert smape(1.0, 3.0) == 100.0
    assert smape_paper(1.0, 3.0) == 50.0
    assert smape(0.0, 0.0) == 0.0
    assert smape(0.0, 5.0) == 200.0
    assert smape(None, 1.0) is None
    assert smape(-1.0, 1.0) == 200.0


def test_sketch_relative_error_merge_and_json():
    rng = np.random.default_rng(3)
    x = rng.lognormal(-4, 1.5, 200_000)
    parts = np.array_split(x, 7)
    sketches = [QuantileSketch(0.005).add(p) for p in parts]
    merged = sketches[0]
    for s in sketches[1:]:
        merged.merge(s)
    whole = QuantileSketch(0.005).add(x)
    qs = np.linspace(0, 1, 401)
    assert np.array_equal(merged.quantiles(qs), whole.quantiles(qs))
    truth = np.quantile(x, qs, method="lower")
    assert np.max(np.abs(merged.quantiles(qs) - truth) / truth) <= 0.005 + 1e-12
    back = QuantileSketch.from_json(merged.to_json())
    assert np.array_equal(back.quantiles(qs), whole.quantiles(qs))
    assert back.count == len(x)
    assert back.mean == pytest.approx(x.mean(), rel=1e-12)
    assert back.std == pytest.approx(x.std(), rel=1e-9)


def test_sketch_weights_zeros_negatives_and_empty():
    s = QuantileSketch().add(np.array([1.0, 2.0]), weights=np.array([3.0, 1.0]))
    assert s.count == 4 and s.quantile(0.5) == pytest.approx(1.0, rel=0.005)
    z = QuantileSketch().add(np.array([-2.0, 0.0, 0.0, 3.0]))
    assert z.quantile(0.0) == pytest.approx(-2.0, rel=0.005)
    assert z.quantile(0.5) == 0.0
    assert z.quantile(1.0) == pytest.approx(3.0, rel=0.005)
    assert np.isnan(QuantileSketch().quantile(0.5))
    with pytest.raises(ValueError):
        QuantileSketch(0.01).merge(QuantileSketch(0.005))


def test_blocked_std_of_a_large_array_is_numpys_bit_for_bit():
    # above LARGE the std is summed in blocks that rebuild NumPy's pairwise sum: no temporary
    # as large as the input, and still np.std's exact value
    from twinbench.reports.stats import LARGE, _std

    rng = np.random.default_rng(4)
    for n in (LARGE + 1, 3 * LARGE + 17):
        v = rng.lognormal(-4, 0.7, n)
        assert _std(v) == float(np.std(v))
        d = describe_ms("itl", v, (50, 99))
        assert d["std_itl_ms"] == float(np.std(v) * 1000)
        assert d["p99_itl_ms"] == float(np.percentile(v, 99) * 1000)
