"""Comparison, regression gate and noise floor, tested with real noise: runs simulated by an
independent M/G/c queue (reports/synthetic.py) with different seeds, never copies of one run."""
from __future__ import annotations

import numpy as np
import pytest

from twinbench.reports.compare import compare, noise_floor
from twinbench.reports.metrics import summarize
from twinbench.reports.regression import parse_fail_on, regression_gate
from twinbench.reports.synthetic import queue_run
from twinbench.traces.errors import TwinbenchError

BOUNDS = "p99_ttft_ms:+10%,mean_e2el_ms:+10%,p90_itl_ms:+10%,output_throughput:-5%"
N = 800


@pytest.fixture(scope="module")
def replays():
    """One trace (seed 7) replayed three times with fresh service noise, like repeated runs
    against a real server; plus a planted 25 % slowdown of the server."""
    runs = [summarize(queue_run(N, 7, service_seed=k), label=f"rep{k}") for k in range(3)]
    slow = summarize(queue_run(N, 7, service_seed=9, slowdown=1.25), label="slow")
    return runs, slow


def test_smape_table_and_conventions(replays):
    runs, slow = replays
    comp = compare(runs[0], slow)
    row = comp.row("mean_ttft_ms")
    a, b = row.values
    assert row.smape[0] == pytest.approx(100 * abs(a - b) / ((abs(a) + abs(b)) / 2))
    assert row.smape_paper[0] == pytest.approx(row.smape[0] / 2)
    assert set(comp.per_adapter) == {"a", "b", "c"}
    means = comp.adapter_smape_mean["mean_ttft_ms"][0]
    assert means == pytest.approx(np.mean([comp.per_adapter[x][[r.metric for r in
                                           comp.per_adapter[x]].index("mean_ttft_ms")].smape[0]
                                           for x in "abc"]))
    d = comp.to_dict()
    assert "0–200" in d["smape_definition"] and d["baseline"] == "rep0"


def test_gate_passes_noise_only_replays_in_both_directions(replays):
    runs, _ = replays
    bounds = parse_fail_on(BOUNDS)
    for i in range(3):
        for j in range(3):
            if i != j:
                results = regression_gate(runs[i], runs[j], bounds, reps=200)
                assert not any(r.failed for r in results), [r.to_dict() for r in results]


def test_gate_flags_a_planted_regression(replays):
    runs, slow = replays
    results = {r.bound.metric: r for r in
               regression_gate(runs[0], slow, parse_fail_on(BOUNDS), reps=400)}
    for metric in ("p99_ttft_ms", "mean_e2el_ms", "p90_itl_ms"):
        r = results[metric]
        assert r.crossed and r.significant and r.failed, r.to_dict()
        assert r.ci_pct[0] > 0 and r.rank_p < 0.05
        assert r.paired == (metric != "p90_itl_ms")  # per-request metrics pair by request id
    # throughput of an open-loop, unsaturated server follows the offered load: no regression
    assert not results["output_throughput"].failed


def test_independent_traces_are_judged_against_the_noise_floor():
    """Different traces (different seeds) differ by more than in-run resampling can see; the
    repeats' own spread keeps such differences from being called a regression."""
    base = [summarize(queue_run(600, s), label=f"s{s}") for s in (11, 12, 13)]
    nf = noise_floor(base)
    m = nf.metrics["p99_ttft_ms"]
    assert m["range_pct"] > 0 and m["cv_pct"] > 0 and m["max_pair_smape_pct"] > 0
    assert nf.metrics["completed"]["std"] == 0.0
    tight = parse_fail_on("p99_ttft_ms:+1%,mean_ttft_ms:+1%")
    crossed = 0
    for i in range(3):
        for j in range(3):
            if i != j:
                results = regression_gate(base[i], base[j], tight, reps=200, noise=nf)
                crossed += sum(r.crossed for r in results)
                assert not any(r.failed for r in results)
    assert crossed > 0


def test_starvation_agreement_verdicts():
    ok = summarize(queue_run(600, 21), label="ok")
    starved = summarize(queue_run(600, 21, starve="c", starve_after_s=30), label="starved")
    comp = compare(ok, starved)
    assert comp.starvation["c"]["verdict"] == "DISAGREE"
    assert comp.starvation["c"]["starving"] == [False, True]
    assert comp.starvation["a"]["verdict"] == "agree: not starving"


def test_fail_on_parsing_errors_name_the_flag():
    assert parse_fail_on("p99_ttft_ms:+10%")[0].direction == 1
    assert parse_fail_on("output_throughput:-5.5%")[0].pct == 5.5
    for bad in ("p99_ttft_ms+10%", "p99_ttft_ms:10", "x:+%", ""):
        with pytest.raises(TwinbenchError, match="--fail-on"):
            parse_fail_on(bad)
