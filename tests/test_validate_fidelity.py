"""Validation without a server: the naive baseline's records, the three SMAPE columns, the
noise-aware fidelity bounds and the twin's config precedence."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from twinbench.replay.validate import (check_bounds, fidelity, parse_bounds, real_as_twin,
                                       text_table, three_columns)
from twinbench.replay.validate_run import StaticFacts, twin_config
from twinbench.reports.metrics import summarize
from twinbench.traces.core import Adapter, Request, Trace
from twinbench.traces.errors import TwinbenchError
from twinbench.twin.baseline import baseline_constants, simulate_baseline
from twinbench.twin.profile import Profile


def _profile(step_ms: float, first_ms: float) -> Profile:
    base = Profile.load("llama-3.1-8b-h100").to_json()
    base["baseline"] = {"step_ms": step_ms, "first_token_ms": first_ms}
    return Profile.from_json(base)


def _trace() -> Trace:
    rng = np.random.default_rng(0)
    reqs = [Request(id=f"r{i}", arrival_s=0.2 * i, adapter=[None, "a0", "a1"][i % 3],
                    prompt_tokens=int(rng.integers(10, 50)), output_tokens=int(rng.integers(2, 30)))
            for i in range(60)]
    return Trace.from_requests(reqs, [Adapter("a0", 8), Adapter("a1", 16)])


def test_baseline_is_constant_steps_without_queueing():
    trace = _trace()
    recs = simulate_baseline(trace, _profile(10.0, 25.0))
    assert len(recs) == len(trace)
    for r, req in zip(recs, trace):
        assert r.status == "ok" and r.output_tokens == req.output_tokens
        assert r.first_token_s == pytest.approx(req.arrival_s + 0.025)
        assert np.allclose(np.diff(r.chunk_times), 0.010)
    # constants fall back to the step model when the profile has no baseline section
    first, step = baseline_constants(Profile.load("llama-3.1-8b-h100"))
    st = Profile.load("llama-3.1-8b-h100").section("step_time")
    assert step == pytest.approx(st["base_ms"] + st["per_decode_seq_ms"])


def _smape(a, b):
    return 0.0 if a == b == 0 else 100 * abs(a - b) / ((abs(a) + abs(b)) / 2)


def test_three_columns_follow_the_definitions():
    real = [{"m": 100.0}, {"m": 110.0}, {"m": 90.0}]
    row = three_columns(real, {"m": 120.0}, {"m": 50.0}, "m")
    pairs = [_smape(a["m"], b["m"]) for a, b in itertools.combinations(real, 2)]
    assert row["real_vs_real"] == pytest.approx(np.mean(pairs))
    assert row["twin_vs_real"] == pytest.approx(np.mean([_smape(r["m"], 120.0) for r in real]))
    assert row["baseline_vs_real"] == pytest.approx(np.mean([_smape(r["m"], 50.0) for r in real]))


def test_fidelity_of_runs_and_noise_aware_bounds():
    trace = _trace()
    real = [summarize(simulate_baseline(trace, _profile(10.0 + d, 25.0)), label=f"real-{i}")
            for i, d in enumerate((0.0, 0.2, -0.2))]
    twin = summarize(simulate_baseline(trace, _profile(10.1, 25.0)), label="twin")
    base = summarize(simulate_baseline(trace, _profile(20.0, 25.0)), label="baseline")
    f = fidelity(real, twin, base)
    itl = f.metrics["median_itl_ms"]
    assert itl["real"] == pytest.approx([10.0, 10.2, 9.8])
    assert itl["twin_vs_real"] < itl["baseline_vs_real"]
    assert set(f.per_adapter) >= {"a0", "a1"}
    assert all(v["twin_agrees"] for v in f.starvation.values())
    # the ITL bound of 1 % is crossed, but the twin stays within the real noise (2 %)
    assert itl["real_vs_real"] > itl["twin_vs_real"] > 1.0
    assert check_bounds(f, {"median_itl_ms": 1.0}) == []
    assert check_bounds(f, {"median_itl_ms": 0.01, "starvation": None}) == []
    worse = summarize(simulate_baseline(trace, _profile(13.0, 25.0)), label="twin")
    failed = check_bounds(fidelity(real, worse, base), {"median_itl_ms": 5.0})
    assert len(failed) == 1 and failed[0].startswith("median_itl_ms")
    assert "twin-vs-real" in text_table(f)


def test_each_real_run_in_the_twins_place_shows_whether_bounds_are_attainable():
    trace = _trace()
    real = [summarize(simulate_baseline(trace, _profile(step, 25.0)), label=f"real-{i}")
            for i, step in enumerate((10.0, 10.0, 13.0))]
    base = summarize(simulate_baseline(trace, _profile(20.0, 25.0)), label="baseline")
    scored = real_as_twin(real, base)
    assert len(scored) == 3
    # run 1 against runs 2 and 3: the others disagree by 26 %, so a 5 % bound is within noise
    first = scored[0].metrics["median_itl_ms"]
    assert first["real"] == pytest.approx([10.0, 13.0])
    assert first["twin_vs_real"] == pytest.approx(_smape(10.0, 13.0) / 2)
    assert first["real_vs_real"] == pytest.approx(_smape(10.0, 13.0))
    # the outlier against two identical runs (no noise) crosses it
    crossed = [check_bounds(f, {"median_itl_ms": 5.0}) for f in scored]
    assert [len(x) for x in crossed] == [0, 0, 1]
    assert real_as_twin(real[:2], base) == []


def test_bound_spec_parsing():
    assert parse_bounds("output_throughput:3,starvation") == {"output_throughput": 3.0,
                                                               "starvation": None}
    assert parse_bounds("targets")["p99_ttft_ms"] == 20.0
    for bad in ("output_throughput", "nonsense:3", "median_ttft_ms:-1", "median_ttft_ms:x"):
        with pytest.raises(TwinbenchError):
            parse_bounds(bad)


def test_twin_config_precedence_profile_then_server_facts_then_flags():
    prof = Profile.load("llama-3.1-8b-h100")
    facts = StaticFacts(num_gpu_blocks=1024, block_size=32, max_loras=2, max_model_len=1024)
    c = twin_config(prof, facts, {"max_loras": 3, "max_num_seqs": 8})
    assert (c.num_gpu_blocks, c.block_size, c.max_model_len) == (1024, 32, 1024)
    assert c.max_loras == 3 and c.max_num_seqs == 8
    assert c.max_num_batched_tokens == prof.defaults["max_num_batched_tokens"]


def test_twin_with_speed_variation_is_the_mean_of_its_seeds():
    """With `step_jitter` every twin run is one draw of the drift: validation averages the
    metrics of several seeds and takes each starvation verdict by majority."""
    import copy

    from twinbench.replay.validate import mean_summary
    from twinbench.replay.validate_run import twin_seeds_default, with_seed
    from twinbench.twin import simulate
    from twinbench.twin.config import ServerConfig

    plain = Profile.load("llama-3.1-8b-h100")
    jittery = plain.with_changes(step_jitter={"sigma": 0.3, "window_ms": 20.0, "seed": 4},
                                 name="jittery")
    assert twin_seeds_default(plain) == 1 and twin_seeds_default(jittery) == 5
    assert with_seed(jittery, 2).data["step_jitter"]["seed"] == 6
    trace = _trace()
    cfg = ServerConfig(max_num_seqs=4, max_loras=1)
    runs = [summarize(simulate(trace, cfg, with_seed(jittery, k)).records, label="twin")
            for k in range(3)]
    itls = [r.metrics["median_itl_ms"] for r in runs]
    assert len(set(itls)) == 3  # the seeds differ
    mean = mean_summary(runs)
    assert mean.metrics["median_itl_ms"] == pytest.approx(np.mean(itls))
    assert mean.metrics["completed"] == pytest.approx(np.mean([r.metrics["completed"]
                                                                for r in runs]))
    a0 = [r.per_adapter["a0"].metrics["median_ttft_ms"] for r in runs]
    assert mean.per_adapter["a0"].metrics["median_ttft_ms"] == pytest.approx(np.mean(a0))
    assert mean.series is runs[0].series  # overlays show the first run
    # verdicts by majority: two runs of three say a1 starves
    flipped = [copy.deepcopy(r) for r in runs]
    for r, starving in zip(flipped, (True, False, True)):
        r.starvation.adapters["a1"].starving = starving
    assert mean_summary(flipped).starvation.adapters["a1"].starving is True
    assert mean_summary(runs[:1]) is runs[0]
