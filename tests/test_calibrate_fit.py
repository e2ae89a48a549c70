"""Calibration without a server: the plan fits its budget, measured chunk gaps become the right
fit rows, and the fit recovers known coefficients (rows generated from a known step model)."""
from __future__ import annotations

import numpy as np
import pytest

from twinbench.replay.calibrate import PointResult, decode_rows, prefill_rows
from twinbench.replay.calibrate_fit import build_profile, fit_all, predict, quality
from twinbench.replay.calibrate_plan import (PlanFacts, PlanPoint, build_plan, plan_cost_s,
                                             scale_to_budget)
from twinbench.replay.cmd_calibrate import parse_budget
from twinbench.reports.records import RequestRecord
from twinbench.traces.errors import TwinbenchError
from twinbench.twin.profile import Profile

FACTS = PlanFacts(max_num_seqs=16, max_num_batched_tokens=2048, max_model_len=1024,
                  max_loras=2, adapters=(("a0", 8), ("a1", 16), ("a2", 8)), runtime_loading=True)

# the "true" server the synthetic measurements come from
TRUE = {"base_ms": 6.0, "per_decode_seq_ms": 0.25, "per_kv_token_ms": 0.002,
        "per_prefill_token_ms": 0.08, "per_prefill_attention_pair_ms": 2e-5,
        "per_lora_prefill_token_ms": 0.05,
        "lora_factor": {"base": 1.6, "per_adapter": 0.2, "per_rank_unit": 0.01,
                        "base_only_on_lora_server": 1.0}}
FRONTEND_MS = 4.0


def test_budget_parsing():
    assert parse_budget("30s") == 30
    assert parse_budget("5m") == 300
    assert parse_budget("90") == 90
    for bad in ("", "five", "2s", "-3m"):
        with pytest.raises(TwinbenchError):
            parse_budget(bad)


def test_plan_covers_every_kind_and_fits_budgets():
    plan = build_plan(FACTS)
    kinds = {p.kind for p in plan}
    assert kinds == {"decode", "prefill", "lora", "load"}
    assert max(p.concurrency for p in plan) == FACTS.max_num_seqs
    assert all(p.prompt_tokens + p.output_tokens <= FACTS.max_model_len for p in plan)
    assert {len(set(p.adapters) - {None}) for p in plan if p.kind == "lora"} >= {1, 2}
    step_ms = 20.0
    for budget in (20.0, 60.0, 120.0):
        small = scale_to_budget(plan, budget, step_ms)
        assert small, "the first point is always kept"
        assert len(small) == 1 or plan_cost_s(small, step_ms) <= budget
    # a small budget still measures decode, prefill and LoRA (kinds take turns)
    first = scale_to_budget(plan, 20.0, step_ms)
    assert {"decode", "prefill", "lora"} <= {p.kind for p in first}
    # a generous budget buys repeats, not fewer points
    big = scale_to_budget(plan, 20 * plan_cost_s(plan, step_ms), step_ms)
    assert len(big) == len(plan)
    assert sum(p.repeats for p in big) > sum(p.repeats for p in plan)


def _records(point: PlanPoint, steps_ms: np.ndarray, ttft_ms: float) -> list[RequestRecord]:
    """A lockstep batch whose decode steps take `steps_ms` (one token per chunk)."""
    out = []
    for i in range(point.concurrency):
        first = 1.0 + ttft_ms / 1000
        times = first + np.concatenate(([0.0], np.cumsum(steps_ms[:point.output_tokens - 1]) / 1000))
        out.append(RequestRecord(id=f"r{i}", adapter=point.adapters[i % len(point.adapters)],
                                 arrival_s=1.0, prompt_tokens=point.prompt_tokens,
                                 requested_output_tokens=point.output_tokens, status="ok",
                                 sent_s=1.0, first_token_s=float(times[0]),
                                 end_s=float(times[-1]), output_tokens=point.output_tokens,
                                 chunk_times=times,
                                 chunk_tokens=np.ones(len(times), dtype=np.int32)))
    return out


def _step_ms(b: int, kv: int, p: int, pairs: int, n_ad: int, ranks: int) -> float:
    rows = [{"decode_seqs": b, "kv_tokens": kv, "prefill_tokens": p, "attention_pairs": pairs,
             "adapters": n_ad, "rank_sum": ranks, "lora_server": True}]
    return float(predict(rows, TRUE)[0])


def _measure(point: PlanPoint, ranks: dict[str, int]) -> PointResult:
    names = list(dict.fromkeys(a for a in point.adapters if a is not None))
    r = sum(ranks[a] for a in names)
    b, p = point.concurrency, point.prompt_tokens
    steps = np.array([_step_ms(b, b * (p + k + 1), 0, 0, len(names), r)
                      for k in range(point.output_tokens)])
    ttft = FRONTEND_MS + _step_ms(0, 0, b * p, b * p * (p + 1) // 2, len(names), r)
    return PointResult(point, [_records(point, steps, ttft)], wall_s=0.0)


def test_rows_from_lockstep_gaps_are_the_steps():
    ranks = dict(FACTS.adapters)
    point = PlanPoint("lora", 4, 32, 40, adapters=("a0", "a1"))
    rows = decode_rows(_measure(point, ranks), ranks, lora_server=True)
    assert rows and all(r["adapters"] == 2 and r["rank_sum"] == 24 for r in rows)
    for r in rows:  # each segment's median step equals the model at the segment's context
        assert r["decode_seqs"] == 4
        assert r["step_ms"] == pytest.approx(_step_ms(4, r["kv_tokens"], 0, 0, 2, 24), rel=2e-3)
    pre = prefill_rows(_measure(PlanPoint("prefill", 1, 256, 2), ranks), ranks, True)
    assert pre[0]["ttft_ms"] == pytest.approx(FRONTEND_MS + _step_ms(0, 0, 256, 256 * 257 // 2,
                                                                      0, 0))


def test_fit_recovers_known_step_model_and_frontend():
    ranks = dict(FACTS.adapters)
    results = [_measure(p, ranks) for p in build_plan(FACTS) if p.kind != "load"]
    from twinbench.replay.calibrate import rows_from_results
    decode, prefill = rows_from_results(results, ranks, lora_server=True)
    fit = fit_all(decode, prefill, [{"kind": "cpu_to_gpu", "rank": 8, "load_ms": 3.0},
                                    {"kind": "cpu_to_gpu", "rank": 16, "load_ms": 4.0}], True)
    assert fit["frontend_ms"] == pytest.approx(FRONTEND_MS, abs=0.2)
    q = fit["quality"]["all"]
    assert q["r2"] > 0.999 and q["rel_residual_pct"]["p99"] < 1.0
    # the fitted model predicts steps it was not fitted on (other batch, context, adapters)
    probe = [{"decode_seqs": 12, "kv_tokens": 12 * 300, "prefill_tokens": 0,
              "attention_pairs": 0, "adapters": 2, "rank_sum": 16, "lora_server": True},
             {"decode_seqs": 3, "kv_tokens": 600, "prefill_tokens": 100,
              "attention_pairs": 100 * 101 // 2, "adapters": 0, "rank_sum": 0,
              "lora_server": True}]
    assert predict(probe, fit["step_time"]) == pytest.approx(predict(probe, TRUE), rel=0.02)
    # LoRA prefill has its own per-token term (the factor alone cannot fit it)
    assert fit["step_time"]["per_lora_prefill_token_ms"] == pytest.approx(0.05, rel=0.05)
    lora_prefill = [{"decode_seqs": 0, "kv_tokens": 0, "prefill_tokens": 700,
                     "attention_pairs": 700 * 701 // 2,
                     "adapters": 1, "rank_sum": 8, "lora_server": True}]
    assert predict(lora_prefill, fit["step_time"]) == pytest.approx(
        predict(lora_prefill, TRUE), rel=0.02)
    assert fit["adapter_load"]["cpu_to_gpu_ms"] == pytest.approx(2.0)
    assert fit["adapter_load"]["cpu_to_gpu_per_rank_ms"] == pytest.approx(0.125)


def test_built_profile_loads_and_keeps_provenance():
    ranks = dict(FACTS.adapters)
    from twinbench.replay.calibrate import ServerTarget, rows_from_results
    results = [_measure(p, ranks) for p in build_plan(FACTS) if p.kind in ("decode", "prefill")]
    decode, prefill = rows_from_results(results, ranks, lora_server=True)
    fit = fit_all(decode, prefill, [], True)
    target = ServerTarget(base_url="http://127.0.0.1:1", model="tiny", version="0.32.0",
                          max_model_len=1024, adapters=ranks, adapter_paths={},
                          cache_config={"block_size": 32, "num_gpu_blocks": 1024,
                                        "kv_cache_memory_bytes": "67108864",
                                        "kv_cache_size_tokens": "32768"}, max_loras=2)
    prof = build_profile("t", target, {"max_num_seqs": 16, "max_num_batched_tokens": 2048,
                                       "block_size": 32, "max_loras": 2, "max_model_len": 1024},
                         fit, {"plan": {"points": []}})
    again = Profile.from_json(prof.to_json())
    assert again.num_gpu_blocks(32, 2, 16) == 1024          # the server's KV capacity
    assert again.defaults["max_num_seqs"] == 16
    assert again.provenance["server"]["vllm_version"] == "0.32.0"
    assert again.section("frontend")["input_ms"] == pytest.approx(fit["frontend_ms"])
    assert quality(fit["rows"], fit["step_time"])["all"]["rows"] == len(fit["rows"])


def test_frontend_from_a_real_calibration_whose_long_prompts_curve():
    # Measured rows where the old estimate (TTFT's intercept against prompt length, minus the
    # step's) gave a 26 ms frontend, left the 16-token prefill step at ~0 ms and drove the
    # relative refit to base_ms = 0 (R^2 0.82). Fitted jointly, the decode rows pin the step's
    # intercept and the frontend lands where the shortest TTFT allows.
    import gzip
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "data", "calibrate",
                        "tiny-cpu-fit-rows.json.gz")
    rows = json.loads(gzip.decompress(open(path, "rb").read()))["fit_rows"]
    decode = [r for r in rows if "prefill" not in r["kind"]]
    prefill = [r for r in rows if "prefill" in r["kind"]]
    fit = fit_all(decode, prefill, [], True)
    st = fit["step_time"]
    shortest = min((r for r in prefill if not r["adapters"]), key=lambda r: r["prefill_tokens"])
    assert 0 < fit["frontend_ms"] < shortest["ttft_ms"] - st["base_ms"]
    assert 6.0 < st["base_ms"] < 11.0           # decode at batch 1 measured 9.7 ms
    assert 0.9 < st["per_decode_seq_ms"] < 1.4
    assert fit["quality"]["all"]["r2"] > 0.98
    assert fit["quality"]["decode"]["rel_residual_pct"]["p50"] < 15.0


def _jittery_rows(sigma: float, window_ms: float, seed: int = 0, repeats: int = 8) -> list[dict]:
    """Decode segments of several points whose server speed is log-normal and constant within
    windows of `window_ms` (what `step_jitter` models), repeats spread over time."""
    rng = np.random.default_rng(seed)
    speed: dict[int, float] = {}
    rows, t = [], 0.0
    for rep in range(repeats):
        for b in (1, 2, 4, 8):
            kv = b * 40
            nominal = _step_ms(b, kv, 0, 0, 0, 0)
            for _ in range(16):  # 16 segments of 8 steps
                steps = []
                for _ in range(8):
                    w = int(t // window_ms)
                    if w not in speed:
                        speed[w] = float(np.exp(sigma * rng.standard_normal() - sigma ** 2 / 2))
                    steps.append(nominal * speed[w])
                    t += steps[-1]
                rows.append({"kind": "decode", "point": "decode step vs batch size",
                             "repeat": rep, "steps": 8, "step_ms": float(np.mean(steps)),
                             "decode_seqs": b, "kv_tokens": kv, "prefill_tokens": 0,
                             "attention_pairs": 0, "adapters": 0, "rank_sum": 0,
                             "lora_server": True})
            t += 1000.0  # the next batch starts a second later
    return rows


def test_speed_variation_is_estimated_from_decode_segments():
    from twinbench.replay.calibrate_fit import estimate_jitter

    for sigma, window_ms in ((0.15, 600.0), (0.3, 300.0)):
        est = estimate_jitter(_jittery_rows(sigma, window_ms), TRUE)
        assert est is not None
        # a point's own median absorbs a little of the spread: estimates run up to ~25 % low
        assert est["sigma"] == pytest.approx(sigma, rel=0.35)
        assert window_ms / 2 < est["window_ms"] < window_ms * 2
    # steps that never vary give no variation to model
    steady = [{**r, "step_ms": _step_ms(r["decode_seqs"], r["kv_tokens"], 0, 0, 0, 0)}
              for r in _jittery_rows(0.15, 600.0)]
    assert estimate_jitter(steady, TRUE) is None
    assert estimate_jitter(_jittery_rows(0.15, 600.0)[:10], TRUE) is None  # too few rows
    # a calibrated profile carries it, and the twin reads it
    prof = Profile.load("llama-3.1-8b-h100").with_changes(
        step_jitter=estimate_jitter(_jittery_rows(0.15, 600.0), TRUE), name="jittery")
    from twinbench.twin.steptime import StepModel
    assert StepModel.from_profile(prof).jitter_window_ns > 0


def _profiler(points_seen: list, fail_at: int | None = None):
    """A Profiler whose batches are recorded instead of sent (their order is under test)."""
    from twinbench.replay import calibrate as cal

    target = cal.ServerTarget(base_url="http://127.0.0.1:9", model="m", version=None,
                              max_model_len=1024, adapters={}, adapter_paths={})
    prof = cal.Profiler(backend=None, target=target, budget_s=3600.0, quiet=True)

    def fake_send(backend, point, tag, seed, timeout_s=120.0):
        if fail_at is not None and len(points_seen) == fail_at:
            raise KeyboardInterrupt
        points_seen.append(tag)
        return _records(point, np.full(point.output_tokens, 10.0), 20.0)
    return prof, fake_send


def test_profiler_spreads_each_points_repeats_over_the_run(monkeypatch):
    from twinbench.replay import calibrate as cal

    seen: list[str] = []
    prof, fake_send = _profiler(seen)
    monkeypatch.setattr(cal, "send_batch", fake_send)
    monkeypatch.setattr(cal, "metrics_text", lambda backend: None)
    points = [PlanPoint("decode", 1, 32, 20, repeats=3), PlanPoint("prefill", 1, 64, 2),
              PlanPoint("decode", 2, 32, 20, repeats=2)]
    prof.run(points, step_ms=10.0)
    # repeat r of n is due at (r + 1/2) / n of the run: 1/6, 1/4, 1/2, 1/2, 3/4, 5/6
    assert seen == ["p0r0", "p2r0", "p0r1", "p1r0", "p2r1", "p0r2"]
    assert [len(r.records) for r in prof.results] == [3, 1, 2]
    assert [r.point for r in prof.results] == points
    assert [e["repeats_run"] for e in prof.ran] == [3, 1, 2]

    # stopped (Ctrl-C) in the second round: every batch measured so far is kept
    seen2: list[str] = []
    prof2, fake_send2 = _profiler(seen2, fail_at=4)
    monkeypatch.setattr(cal, "send_batch", fake_send2)
    with pytest.raises(KeyboardInterrupt):
        prof2.run(points, step_ms=10.0)
    assert [len(r.records) for r in prof2.results] == [2, 1, 1]
    assert [e["point"]["concurrency"] for e in prof2.ran] == [1, 1, 2]


def test_profiler_out_of_budget_skips_the_points_it_cannot_start(monkeypatch):
    from twinbench.replay import calibrate as cal

    seen: list[str] = []
    prof, fake_send = _profiler(seen)
    monkeypatch.setattr(cal, "send_batch", fake_send)
    monkeypatch.setattr(cal, "metrics_text", lambda backend: None)
    left = iter([100.0, 100.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr(prof, "remaining", lambda: next(left, 0.0))
    points = [PlanPoint("decode", 1, 32, 20, repeats=3), PlanPoint("decode", 2, 32, 20, repeats=3)]
    prof.run(points, step_ms=10.0)
    assert seen == ["p0r0"]
    assert [e["point"]["concurrency"] for e in prof.skipped] == [2]
    assert len(prof.ran) + len(prof.skipped) == len(points)
