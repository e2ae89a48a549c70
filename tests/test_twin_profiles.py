"""Profiles, the integer step-time model, fitting, server config."""
from __future__ import annotations

import json

import numpy as np
import pytest

from twinbench.twin.config import ConfigError, ServerConfig
from twinbench.twin.fit import FitError, fit_adapter_loads, fit_scheduler, fit_step_time
from twinbench.twin.profile import Profile, ProfileError
from twinbench.twin.steptime import StepModel

BUILTIN = ["llama-3.1-8b-h100", "qwen-2.5-7b-h100", "opt-1.3b-h100", "opt-2.7b-h100",
           "llama-2-7b-h100"]


def test_builtin_profiles_load_and_round_trip(tmp_path):
    assert set(BUILTIN) <= set(Profile.builtin_names())
    for name in BUILTIN:
        p = Profile.load(name)
        assert p.schema_version == 1 and p.provenance.get("sources")
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(p.to_json()))
        again = Profile.load(str(path))
        assert again.to_json() == p.to_json()


@pytest.mark.parametrize("name,table,per_slot", [
    ("llama-3.1-8b-h100", {8: 305104, 16: 302000, 32: 296352}, {8: 401, 16: 758, 32: 1458}),
    ("qwen-2.5-7b-h100", {8: 700816, 16: 694848, 32: 683472}, {8: 719, 16: 1407, 32: 2853}),
])
def test_kv_capacity_reproduces_the_published_table(name, table, per_slot):
    p = Profile.load(name)
    for rank, tokens in table.items():
        got = p.kv_capacity_tokens(8, rank)
        assert abs(got - tokens) / tokens < 0.001
        drop = p.kv_capacity_tokens(8, rank) - p.kv_capacity_tokens(9, rank)
        assert abs(drop - per_slot[rank]) <= 1


def test_seed_decode_model_is_reproduced_without_context():
    p = Profile.load("llama-3.1-8b-h100")
    m = StepModel.from_profile(p, lora_enabled=False)
    for b in (1, 32, 256):
        # measured: 0.0437994*B + 10.5417 ms at the assumed reference context (512 tokens)
        ns = m.step_ns(b, b * 512, 0, 0, 0, 0, 0, 0) - m.step_ns(0, 0, 0, 0, 0, 0, 0, 0)
        base = m.step_ns(0, 0, 0, 0, 0, 0, 0, 0) - (m.sched_base_fs // 10**6)
        assert abs((ns + base) / 1e6 - (0.0437994 * b + 10.5417)) < 1e-3
    lora = StepModel.from_profile(p, lora_enabled=True)
    one = lora.step_ns(10, 5000, 0, 0, 1, 16, 0, 0) - lora.sched_base_fs // 10**6
    plain = m.step_ns(10, 5000, 0, 0, 0, 0, 0, 0) - m.sched_base_fs // 10**6
    assert abs(one / plain - (200 + 1.93) / 100) < 1e-4


def test_memory_gap_profile_batch_term_is_per_kv_token():
    p = Profile.load("opt-1.3b-h100")
    m = StepModel.from_profile(p, lora_enabled=False)
    b = 64
    ms = m.step_ns(b, b * 330, 0, 0, 0, 0, b, 0) / 1e6
    assert abs(ms - (3.72 + 0.0964 * b)) < 1e-3


def test_segment_durations_equal_single_steps():
    m = StepModel.from_profile(Profile.load("qwen-2.5-7b-h100"))
    seg = m.decode_segment_ns(300, 37, 12345, 3, 56, 37, 9)
    one = [m.step_ns(37, 12345 + 37 * k, 0, 0, 3, 56, 37, 9) for k in range(300)]
    assert seg.tolist() == one


def test_profile_errors_name_the_file(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="p.json"):
        Profile.load(str(bad))
    d = Profile.load("llama-3.1-8b-h100").to_json()
    del d["step_time"]["per_kv_token_ms"]
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="step_time.per_kv_token_ms"):
        Profile.load(str(bad))
    d = Profile.load("llama-3.1-8b-h100").to_json()
    d["schema_version"] = 99
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="schema_version"):
        Profile.load(str(bad))
    with pytest.raises(ProfileError, match="built-in"):
        Profile.load("no-such-profile")
    for jitter, what in (({"sigma": -0.1, "window_ms": 100}, "step_jitter.sigma"),
                         ({"sigma": 0.1, "window_ms": 0}, "step_jitter.window_ms"),
                         ({"sigma": 0.1, "window_ms": float("nan")}, "step_jitter.window_ms"),
                         ({"sigma": 2.0, "window_ms": 100}, "sigma above 1"),
                         ({"sigma": 0.1, "window_ms": 100, "seed": "x"}, "step_jitter.seed"),
                         ([0.1, 100], "step_jitter must be an object")):
        d = Profile.load("llama-3.1-8b-h100").to_json()
        d["step_jitter"] = jitter
        bad.write_text(json.dumps(d))
        with pytest.raises(ProfileError, match=what):
            Profile.load(str(bad))


def test_fit_recovers_step_coefficients():
    rng = np.random.default_rng(0)
    truth = {"base_ms": 8.0, "per_decode_seq_ms": 0.02, "per_kv_token_ms": 4e-5,
             "per_prefill_token_ms": 0.03, "per_prefill_attention_pair_ms": 1e-6}
    rows = []
    for _ in range(400):
        b = int(rng.integers(0, 200))
        kv = b * int(rng.integers(100, 3000))
        p = int(rng.integers(0, 2048)) if rng.random() < 0.5 else 0
        a = p * int(rng.integers(0, 4000)) + p * (p + 1) // 2
        L = int(rng.integers(0, 5))
        base = (truth["base_ms"] + truth["per_decode_seq_ms"] * b + truth["per_kv_token_ms"] * kv
                + truth["per_prefill_token_ms"] * p + truth["per_prefill_attention_pair_ms"] * a)
        factor = (1.9 + 0.02 * L) if L else 1.0
        rows.append({"step_ms": base * factor * (1 + rng.normal(0, 0.002)), "decode_seqs": b,
                     "kv_tokens": kv, "prefill_tokens": p, "attention_pairs": a, "adapters": L,
                     "lora_server": L > 0})
    fit = fit_step_time(rows)
    for k, v in truth.items():
        assert abs(fit[k] - v) / v < 0.05, (k, fit[k], v)
    assert abs(fit["lora_factor"]["base"] - 1.9) < 0.02
    assert abs(fit["lora_factor"]["per_adapter"] - 0.02) < 0.005
    assert all(v >= 0 for k, v in fit.items() if isinstance(v, float))
    # the fitted section plugs into a profile
    p = Profile.load("llama-3.1-8b-h100").with_changes(
        step_time={k: v for k, v in fit.items() if k != "fit_report"}, name="fitted")
    assert p.name == "fitted" and p.section("step_time")["base_ms"] == fit["base_ms"]


def test_lora_prefill_term_prices_every_prefill_token_of_a_lora_step():
    prof = Profile.load("llama-3.1-8b-h100")
    st = dict(prof.section("step_time"), per_lora_prefill_token_ms=0.5)
    without = StepModel.from_profile(prof)
    with_term = StepModel.from_profile(prof.with_changes(step_time=st, name="t"))
    lora_step = (4, 4000, 300, 300 * 301 // 2, 1, 8, 5, 0)   # one adapter active
    base_step = (4, 4000, 300, 300 * 301 // 2, 0, 0, 5, 0)
    # all 300 prefill tokens pay +0.5 ms (vLLM's CPU LoRA ops gather weights for every token)
    assert with_term.step_ns(*lora_step) - without.step_ns(*lora_step) == 150_000_000
    assert with_term.step_ns(*base_step) == without.step_ns(*base_step)
    decode_only = (4, 4000, 0, 0, 1, 8, 5, 0)
    assert with_term.step_ns(*decode_only) == without.step_ns(*decode_only)


def test_weighted_fit_follows_the_heavier_rows():
    rows = [{"step_ms": 10.0, "decode_seqs": 1, "kv_tokens": 10}] * 50 \
        + [{"step_ms": 20.0, "decode_seqs": 1, "kv_tokens": 10}] * 5
    def predicted(fit):
        return fit["base_ms"] + fit["per_decode_seq_ms"] + 10 * fit["per_kv_token_ms"]

    assert predicted(fit_step_time(rows)) == pytest.approx(600 / 55, rel=1e-3)  # the mean
    w = [1.0] * 50 + [10.0] * 5   # both groups weigh the same in total
    assert predicted(fit_step_time(rows, weights=w)) == pytest.approx(15.0, rel=1e-3)
    with pytest.raises(FitError, match="weights"):
        fit_step_time(rows, weights=[1.0])


def test_fit_scheduler_and_loads_non_negative():
    rows = [{"sched_ms": 0.4 + 0.003 * r, "running": r, "waiting": 0} for r in range(50)]
    s = fit_scheduler(rows)
    assert abs(s["base_ms"] - 0.4) < 1e-6 and abs(s["per_running_ms"] - 0.003) < 1e-6
    assert s["per_waiting_ms"] == 0.0
    loads = fit_adapter_loads([{"kind": "cpu_to_gpu", "rank": r, "load_ms": 6 + 0.07 * r}
                               for r in (8, 16, 32)])
    assert abs(loads["cpu_to_gpu_per_rank_ms"] - 0.07) < 1e-9
    with pytest.raises(FitError):
        fit_step_time([{"step_ms": 1.0}])


def test_config_validation_mirrors_vllm():
    ServerConfig().validate(4096)
    with pytest.raises(ConfigError, match="--max-num-batched-tokens"):
        ServerConfig(max_num_seqs=512, max_num_batched_tokens=256).validate(4096)
    with pytest.raises(ConfigError, match="--max-num-batched-tokens"):
        ServerConfig(enable_chunked_prefill=False, max_num_batched_tokens=2048).validate(4096)
    with pytest.raises(ConfigError, match="--max-cpu-loras"):
        ServerConfig(max_loras=4, max_cpu_loras=2).validate(4096)
    with pytest.raises(ConfigError, match="--scheduling-policy"):
        ServerConfig(scheduling_policy="priority").validate(4096)
    assert ServerConfig.from_dict(ServerConfig(max_loras=3).to_dict()).max_loras == 3


def test_shared_gpu_profile_splits_memory_and_slows_memory_terms():
    p = Profile.load("opt-1.3b-h100")
    two = p.for_shared_gpu(2)
    assert two.section("step_time")["per_kv_token_ms"] == pytest.approx(
        2 * p.section("step_time")["per_kv_token_ms"])
    assert two.kv_capacity_tokens(1, 16, enable_lora=False) < \
        p.kv_capacity_tokens(1, 16, enable_lora=False) / 2
