"""Batch rules and the max_num_seqs sweep, on curves whose answers are known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest

from twinbench.advisor.batch_rules import (BatchCurve, EfficiencyRule, LatencySLORule,
                                           LinearStepModel, PeakFractionRule, kneedle)
from twinbench.advisor.batch_sweep import coarse_batches, sweep_batch

# decode step time a + b*B (ms) of the seed paper's H100 measurements (arXiv 2503.08311)
PAPER_MODELS = {"opt-1.3b": (3.72, 0.0964), "opt-2.7b": (6.46, 0.125),
                "llama-2-7b": (11.35, 0.158)}


def linear_evaluator(a, b, calls):
    def evaluate(batches):
        calls.extend(batches)
        out = []
        for B in batches:
            step = a + b * B
            out.append({"output_throughput": 1000.0 * B / step, "mean_itl_ms": step,
                        "p99_itl_ms": step})
        return out
    return evaluate


@pytest.mark.parametrize("model", sorted(PAPER_MODELS))
@pytest.mark.parametrize("eps", [0.2, 0.1, 0.5])
def test_efficiency_rule_reproduces_the_linear_closed_form(model, eps):
    a, b = PAPER_MODELS[model]
    # (a+b)/(a+bB) >= eps  <=>  B <= ((a+b)/eps - a)/b ;  a+bB <= 5(a+32b) <=> B <= (4a+160b)/b
    expected = math.floor(min(((a + b) / eps - a) / b, (4 * a + 160 * b) / b))
    expected = min(expected, 512)
    calls = []
    sweep = sweep_batch(linear_evaluator(a, b, calls), EfficiencyRule(eps=eps), 512)
    assert sweep.choice.batch == expected
    assert len(set(calls)) == len(calls) < 45  # refinement, not a scan of 512 points
    assert sweep.linear_fit.a_ms == pytest.approx(a)
    assert sweep.linear_fit.b_ms == pytest.approx(b)


def test_itl_limit_binds_when_eps_is_loose():
    a, b = PAPER_MODELS["opt-1.3b"]
    expected = math.floor((5 * (a + 32 * b) - a) / b)  # 314 for OPT-1.3B
    sweep = sweep_batch(linear_evaluator(a, b, []), EfficiencyRule(eps=0.01), 512)
    assert sweep.choice.batch == expected


@pytest.mark.parametrize("model", sorted(PAPER_MODELS))
def test_kneedle_matches_the_integer_argmax(model):
    a, b = PAPER_MODELS[model]
    bs = np.arange(1, 513)
    t = bs / (a + b * bs)
    gap = (t - t[0]) / (t[-1] - t[0]) - (bs - 1) / 511
    expected = int(bs[np.argmax(gap)])
    sweep = sweep_batch(linear_evaluator(a, b, []), EfficiencyRule(), 512)
    assert sweep.knee.batch == expected
    # and the continuous closed form T'(B) = chord slope lies within one batch of it
    assert abs(LinearStepModel(a, b).kneedle_knee(1, 512) - expected) <= 1


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.9, 0.95])
def test_peak_fraction_rule(fraction):
    a, b = PAPER_MODELS["opt-2.7b"]
    bs = np.arange(1, 257)
    t = 1000.0 * bs / (a + b * bs)
    expected = int(bs[np.argmax(t >= fraction * t.max())])
    sweep = sweep_batch(linear_evaluator(a, b, []), PeakFractionRule(fraction), 256)
    assert sweep.choice.batch == expected


def test_latency_slo_rule_uses_percentiles():
    a, b = PAPER_MODELS["llama-2-7b"]
    expected = math.floor((40.0 - a) / b)
    sweep = sweep_batch(linear_evaluator(a, b, []), LatencySLORule({"p99_itl_ms": 40.0}), 512)
    assert sweep.choice.batch == expected
    with pytest.raises(ValueError, match="percentile"):
        LatencySLORule({"mean_itl_ms": 40.0})


def test_efficiency_rule_stops_at_the_first_failure_on_a_measured_curve():
    """Non-linear curve: throughput collapses at B=48 (preemption) and recovers later."""
    points = {1: 100.0, 2: 190.0, 4: 360.0, 8: 650.0, 16: 1100.0, 32: 1500.0, 48: 700.0,
              64: 1700.0, 128: 1800.0}
    curve = BatchCurve.from_points({b: {"output_throughput": t, "mean_itl_ms": 10.0}
                                    for b, t in points.items()})
    choice = EfficiencyRule(eps=0.2).choose(curve)
    assert choice.batch == 32 and choice.bracket == (32, 48)
    assert PeakFractionRule(0.9).choose(curve).batch == 64
    assert kneedle(curve.batch, curve["output_throughput"]).batch == 32


def test_no_batch_meets_an_impossible_slo():
    a, b = PAPER_MODELS["opt-1.3b"]
    sweep = sweep_batch(linear_evaluator(a, b, []), LatencySLORule({"p99_itl_ms": 1.0}), 64)
    assert sweep.choice.batch is None


def test_coarse_batches_hold_the_references():
    bs = coarse_batches(512)
    assert bs[0] == 1 and bs[-1] == 512 and 32 in bs
    assert coarse_batches(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]
