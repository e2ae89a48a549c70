"""The twin engine: coalesced == step-by-step, invariants, starvation, incremental API."""
from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinbench.traces.core import Adapter, Trace
from twinbench.twin import simulate
from twinbench.twin.config import ServerConfig
from twinbench.twin.engine import Engine
from twinbench.twin.profile import Profile

PROFILE = Profile.load("llama-3.1-8b-h100")
# the same with the additive LoRA terms a CPU calibration fits, so that equality tests cover them
LORA_TERMS_PROFILE = PROFILE.with_changes(
    step_time={**PROFILE.section("step_time"), "per_lora_prefill_token_ms": 0.0173,
               "per_lora_step_ms": 0.731}, name="llama-with-lora-terms")
# the same with speed variation over 3 ms windows (shorter than most steps, so windows change
# inside segments and between consecutive steps)
JITTER_PROFILE = LORA_TERMS_PROFILE.with_changes(
    step_jitter={"sigma": 0.3, "window_ms": 3.0, "seed": 7}, name="llama-with-jitter")


def make_trace(seed: int, n: int, n_adapters: int, span_s: float, max_prompt: int,
               max_output: int, prefix: bool = False) -> Trace:
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0, span_s, n))
    adapter = np.where(rng.random(n) < 0.2, -1, rng.integers(0, max(n_adapters, 1), n)) \
        if n_adapters else np.full(n, -1)
    prompts = rng.integers(1, max_prompt, n)
    outputs = rng.integers(1, max_output, n)
    adapters = [Adapter(f"a{k}", rank=(8, 16, 32)[k % 3]) for k in range(n_adapters)]
    tr = Trace(arrival_s=arrival, adapter_idx=adapter, prompt_tokens=prompts,
               output_tokens=outputs, adapters=adapters)
    if prefix:  # a few shared system prompts of 1-3 hash blocks of 64 tokens
        flat, offsets = [], [0]
        for k in range(n):
            family = int(rng.integers(0, 4))
            depth = int(rng.integers(0, 4))
            flat.extend(family * 100 + d for d in range(depth))
            offsets.append(len(flat))
        tr.prefix_flat = np.array(flat, dtype=np.int64)
        tr.prefix_offsets = np.array(offsets, dtype=np.int64)
        tr.meta["prefix_block_tokens"] = 64
    return tr


def key(rec):
    times = None if rec.chunk_times is None else rec.chunk_times.tolist()
    return (rec.id, rec.status, rec.first_token_s, rec.end_s, rec.output_tokens, times)


config_strategy = st.builds(
    ServerConfig,
    max_num_seqs=st.sampled_from([2, 4, 16, 64]),
    max_num_batched_tokens=st.sampled_from([64, 256, 2048]),
    enable_chunked_prefill=st.booleans(),
    long_prefill_token_threshold=st.sampled_from([0, 0, 32]),
    max_model_len=st.just(1024),
    num_gpu_blocks=st.sampled_from([70, 100, 400, None]),
    enable_prefix_caching=st.booleans(),
    max_loras=st.sampled_from([1, 2, 4]),
    max_cpu_loras=st.sampled_from([None, 4, 8]),
    max_lora_rank=st.just(32),
    vllm_version=st.sampled_from(["0.32", "0.33", "0.8"]),
)


def fix_config(cfg: ServerConfig) -> ServerConfig:
    batched = cfg.max_num_batched_tokens
    if not cfg.enable_chunked_prefill:
        batched = max(batched, 1024)
    batched = max(batched, cfg.max_num_seqs)
    cpu = cfg.max_cpu_loras
    if cpu is not None and cpu < cfg.max_loras:
        cpu = cfg.max_loras
    return cfg.with_(max_num_batched_tokens=batched, max_cpu_loras=cpu)


@settings(max_examples=int(os.environ.get("TWIN_HYPOTHESIS_EXAMPLES", "100")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=config_strategy, seed=st.integers(0, 10**6), n=st.integers(1, 60),
       n_adapters=st.sampled_from([0, 1, 3, 6]), span=st.sampled_from([0.0, 2.0, 20.0]),
       prefix=st.booleans())
def test_coalesced_and_step_modes_give_identical_records(cfg, seed, n, n_adapters, span, prefix):
    cfg = fix_config(cfg)
    tr = make_trace(seed, n, n_adapters, span, 900, 200, prefix)
    profile = (PROFILE, LORA_TERMS_PROFILE, JITTER_PROFILE)[seed % 3]
    a = simulate(tr, cfg, profile, mode="coalesced")
    b = simulate(tr, cfg, profile, mode="step")
    assert sorted(map(key, a.records)) == sorted(map(key, b.records))
    assert a.stats["steps"] == b.stats["steps"]
    assert a.stats["preemptions"] == b.stats["preemptions"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=config_strategy, seed=st.integers(0, 10**6), n=st.integers(1, 50),
       n_adapters=st.sampled_from([0, 2, 6]), mode=st.sampled_from(["coalesced", "step"]))
def test_invariants_hold(cfg, seed, n, n_adapters, mode):
    cfg = fix_config(cfg)
    tr = make_trace(seed, n, n_adapters, 5.0, 900, 150)
    log: list[dict] = []
    res = simulate(tr, cfg, PROFILE, mode=mode, step_log=log)
    # every request ends exactly once
    ids = [r.id for r in res.records]
    assert sorted(ids) == sorted(str(i) for i in range(n))
    usable = res.info.server_config["num_gpu_blocks"] - 1
    for rec in res.records:
        i = int(rec.id)
        assert rec.status == "ok"
        # token conservation: outputs as requested, clipped to max_model_len like vLLM
        expect = min(int(tr.output_tokens[i]), 1024 - int(tr.prompt_tokens[i]))
        assert rec.output_tokens == expect == len(rec.chunk_times)
        # per-request timestamps non-decreasing, after arrival
        assert rec.first_token_s >= rec.arrival_s
        assert np.all(np.diff(rec.chunk_times) > 0)
        assert rec.end_s == rec.chunk_times[-1]
    prev_end = 0
    for entry in log:
        assert entry["kv_blocks_used"] <= usable
        assert entry["running"] <= cfg.max_num_seqs
        assert len(entry["adapters"]) <= cfg.max_loras
        assert entry["start_ns"] >= prev_end and entry["end_ns"] > entry["start_ns"]
        prev_end = entry["end_ns"]
        assert sum(n for _, n in entry["scheduled"]) <= cfg.max_num_batched_tokens
    # determinism
    again = simulate(tr, cfg, PROFILE, mode=mode)
    assert list(map(key, again.records)) == list(map(key, res.records))


def test_unfinished_at_horizon_are_reported_once():
    tr = make_trace(1, 200, 4, 10.0, 900, 300)
    res = simulate(tr, ServerConfig(max_loras=2, max_lora_rank=32, max_model_len=2048), PROFILE,
                   horizon_s=5.0)
    assert len(res.records) == 200 and len({r.id for r in res.records}) == 200
    statuses = {r.status for r in res.records}
    assert "unfinished" in statuses and "ok" in statuses
    for r in res.records:
        if r.status == "unfinished" and r.chunk_times is not None:
            assert r.output_tokens == len(r.chunk_times) < r.requested_output_tokens


def starvation_trace(n_hot_adapters: int) -> Trace:
    """vLLM issue #16876: hot adapters keep the GPU slots busy; one cold adapter's requests
    arrive early and wait while later hot requests keep entering."""
    rows = []
    t = 0.0
    for k in range(600):  # hot traffic: a steady stream over all hot adapters
        rows.append((t, k % n_hot_adapters, 200, 100))
        t += 0.2
    for j in range(5):  # the cold adapter, early in the run
        rows.append((1.0 + 0.1 * j, n_hot_adapters, 200, 50))
    rows.sort()
    adapters = [Adapter(f"hot{k}", 16) for k in range(n_hot_adapters)] + [Adapter("cold", 16)]
    return Trace(arrival_s=[r[0] for r in rows], adapter_idx=[r[1] for r in rows],
                 prompt_tokens=[r[2] for r in rows], output_tokens=[r[3] for r in rows],
                 adapters=adapters)


def test_cold_adapter_starves_with_too_few_slots_and_not_with_enough():
    tr = starvation_trace(2)
    cfg = ServerConfig(max_num_seqs=64, max_loras=2, max_lora_rank=16, max_model_len=4096)
    starved = simulate(tr, cfg, PROFILE)
    cold = [r for r in starved.records if r.adapter == "cold"]
    hot = [r for r in starved.records if r.adapter != "cold"]
    last_hot_arrival = max(r.arrival_s for r in hot)
    # the cold requests only start once the hot stream is over: later hot requests overtook them
    assert all(r.first_token_s > last_hot_arrival for r in cold)
    overtaking = [r for r in hot if r.arrival_s > 1.5 and r.first_token_s < min(c.first_token_s for c in cold)]
    assert len(overtaking) > 100
    # hot adapters are served promptly (a twin that starves everything fails here)
    hot_ttft = np.median([r.first_token_s - r.arrival_s for r in hot])
    assert hot_ttft < 1.0
    # with a slot per adapter, the same workload does not starve the cold adapter
    fair = simulate(tr, cfg.with_(max_loras=3), PROFILE)
    cold_fair = [r for r in fair.records if r.adapter == "cold"]
    assert max(r.first_token_s - r.arrival_s for r in cold_fair) < 2.0
    assert min(r.first_token_s for r in cold) - max(r.arrival_s for r in cold) > 20.0


def test_engine_incremental_api_matches_simulate():
    tr = make_trace(7, 80, 3, 10.0, 600, 120)
    cfg = ServerConfig(max_num_seqs=16, max_loras=2, max_lora_rank=32, max_model_len=2048,
                       num_gpu_blocks=150)
    sim = {r.id: r for r in simulate(tr, cfg, PROFILE).records}
    eng = Engine(cfg, PROFILE, adapter_ranks={a.name: a.rank for a in tr.adapters})
    times: dict[str, list[int]] = {}
    firsts, finishes = set(), set()
    pending = list(range(len(tr)))
    now = 0
    arrivals = np.rint(tr.arrival_s * 1e9).astype(np.int64)
    while pending or eng.next_event_ns() is not None:
        # a server wakes at the next arrival or the next event, whichever is first
        nxt = eng.next_event_ns()
        arr = int(arrivals[pending[0]]) if pending else None
        now = max(now, min(x for x in (nxt, arr) if x is not None))
        while pending and arrivals[pending[0]] <= now:
            i = pending.pop(0)
            eng.submit(str(i), int(arrivals[i]), int(tr.prompt_tokens[i]),
                       int(tr.output_tokens[i]), tr.adapter_name(i))
        for ev in eng.advance(now):
            assert ev.time_ns <= now and ev.tokens == 1
            times.setdefault(ev.request_id, []).append(ev.time_ns)
            if ev.first:
                firsts.add(ev.request_id)
            if ev.finished:
                finishes.add(ev.request_id)
        if not pending and eng.next_event_ns() is None:
            break
    assert firsts == finishes == set(sim)
    for rid, rec in sim.items():
        assert np.array_equal(np.array(times[rid]) / 1e9, rec.chunk_times)


def test_engine_abort_frees_the_request():
    cfg = ServerConfig(max_num_seqs=4, max_model_len=2048, num_gpu_blocks=200)
    eng = Engine(cfg, PROFILE)
    eng.submit("x", 0, 100, 1000, None)
    eng.submit("y", 0, 100, 5, None)
    events = eng.advance(50_000_000)
    assert events and eng.abort("x")
    assert not eng.abort("x")
    out = []
    while eng.next_event_ns() is not None:
        out += eng.advance(eng.next_event_ns())
    assert all(e.request_id == "y" for e in out)
    assert eng.pool.free == eng.pool.total


def test_sketch_mode_keeps_no_arrays_and_fills_sketches():
    tr = make_trace(3, 300, 4, 30.0, 600, 100)
    res = simulate(tr, ServerConfig(max_loras=4, max_lora_rank=32, max_model_len=2048), PROFILE,
                   token_timestamps="sketch")
    assert all(r.chunk_times is None for r in res.records)
    exact = simulate(tr, ServerConfig(max_loras=4, max_lora_rank=32, max_model_len=2048), PROFILE)
    gaps = np.concatenate([np.diff(r.chunk_times) for r in exact.records if r.adapter == "a0"])
    sk = res.sketches["a0"]["itl"]
    assert sk.count == len(gaps)
    assert abs(sk.quantile(0.5) - np.quantile(gaps, 0.5, method="lower")) <= 0.011 * np.median(gaps)


def test_refused_requests_are_errors():
    tr = Trace(arrival_s=[0.0, 0.1, 0.2], adapter_idx=[-1, 0, -1], prompt_tokens=[5000, 10, 10],
               output_tokens=[5, 5, 5], adapters=[Adapter("big", 64)])
    res = simulate(tr, ServerConfig(max_model_len=4096, max_lora_rank=16), PROFILE)
    status = {r.id: r.status for r in res.records}
    assert status == {"0": "error", "1": "error", "2": "ok"}


def test_prefix_caching_skips_shared_prefill_and_modes_agree():
    tr = make_trace(11, 150, 3, 30.0, 900, 60, prefix=True)
    tr.prompt_tokens = np.maximum(tr.prompt_tokens, 300).astype(np.int32)
    cfg = ServerConfig(max_loras=3, max_lora_rank=32, max_model_len=2048, num_gpu_blocks=400)
    on = simulate(tr, cfg, PROFILE)
    off = simulate(tr, cfg.with_(enable_prefix_caching=False), PROFILE)
    step = simulate(tr, cfg, PROFILE, mode="step")
    assert on.stats["prefix_hit_blocks"] > 100
    assert sorted(map(key, on.records)) == sorted(map(key, step.records))
    ttft = lambda res: np.mean([r.first_token_s - r.arrival_s for r in res.records])
    assert ttft(on) < ttft(off)


def test_records_built_after_the_run_equal_records_streamed_as_they_finish():
    # in memory, exact records are built after the run from one table of step times; streamed
    # (emit) ones are built one by one as requests finish: same records, in the same order,
    # including preempted requests (split token runs) and unfinished ones at the horizon
    tr = make_trace(5, 200, 4, 10.0, 800, 300)
    cfg = ServerConfig(max_num_seqs=32, max_loras=2, max_lora_rank=32, max_model_len=1024,
                       num_gpu_blocks=120)
    kept = simulate(tr, cfg, PROFILE, horizon_s=40.0)
    streamed = []
    simulate(tr, cfg, PROFILE, horizon_s=40.0, emit=streamed.append)
    assert kept.stats["preemptions"] > 0
    assert {r.status for r in kept.records} >= {"ok", "unfinished"}
    assert [key(r) for r in kept.records] == [key(r) for r in streamed]


@given(b=st.integers(1, 300), kv0=st.integers(0, 10**6), n_adapters=st.integers(0, 8),
       rank_sum=st.integers(0, 256), running=st.integers(1, 300), waiting=st.integers(0, 50),
       gap_ms=st.integers(0, 3000), max_steps=st.integers(1, 5000))
@settings(max_examples=200, deadline=None)
def test_decode_segment_ends_equal_stepping_one_by_one(b, kv0, n_adapters, rank_sum, running,
                                                        waiting, gap_ms, max_steps):
    from twinbench.twin.steptime import StepModel

    model = StepModel.from_profile((PROFILE, LORA_TERMS_PROFILE, JITTER_PROFILE)[running % 3])
    start, limit = 10**9, 10**9 + gap_ms * 10**6
    ends = [int(t) for t in model.decode_segment_ends(start, limit, max_steps, b, kv0,
                                                      n_adapters, rank_sum, running, waiting)]
    # reference: step by step; step k >= 1 starts at the end of step k-1, at most at `limit`
    expect, t = [], start
    for k in range(max_steps):
        if k and t > limit:
            break
        t += model.jittered(t, model.step_ns(b, kv0 + b * k, 0, 0, n_adapters, rank_sum,
                                             running, waiting))
        expect.append(t)
    assert ends == expect


def test_speed_variation_spreads_steps_keeps_their_mean_and_is_reproducible():
    """A profile's `step_jitter` scales each step by its window's multiplier: one-sequence
    decode gaps spread (log-sd near sigma), their mean stays the model's (the multipliers
    average 1), and the same trace gives the same records every time."""
    from twinbench.twin.steptime import StepModel

    sigma, window_ms = 0.2, 50.0
    jittery = LORA_TERMS_PROFILE.with_changes(
        step_jitter={"sigma": sigma, "window_ms": window_ms, "seed": 3}, name="jittery")
    model = StepModel.from_profile(jittery)
    nominal = model.step_ns(1, 500, 0, 0, 0, 0, 1, 0)
    durs = np.array([model.jittered(t, nominal)
                     for t in range(0, 20_000 * int(window_ms * 1e6), int(window_ms * 1e6))])
    assert abs(durs.mean() / nominal - 1) < 0.01
    assert abs(np.std(np.log(durs / nominal)) - sigma) < 0.01
    # within one window the speed is one: steps starting in it all get the same multiplier
    w = int(window_ms * 1e6)
    assert len({model.jittered(7 * w + k * (w // 10), nominal) for k in range(10)}) == 1
    # a one-request-at-a-time trace: every decode gap is one step, as the model gives
    tr = Trace(arrival_s=np.arange(40) * 3.0, adapter_idx=np.full(40, -1),
               prompt_tokens=np.full(40, 100), output_tokens=np.full(40, 200), adapters=[])
    cfg = ServerConfig(max_num_seqs=16, max_num_batched_tokens=2048, max_model_len=1024)
    plain = simulate(tr, cfg, LORA_TERMS_PROFILE)
    a, b = simulate(tr, cfg, jittery), simulate(tr, cfg, jittery)
    assert [key(r) for r in a.records] == [key(r) for r in b.records]
    gaps = np.concatenate([np.diff(r.chunk_times) for r in a.records])
    plain_gaps = np.concatenate([np.diff(r.chunk_times) for r in plain.records])
    assert np.ptp(plain_gaps) / np.median(plain_gaps) < 0.05  # no variation: context only
    assert 0.1 < np.std(np.log(gaps / np.median(plain_gaps))) < 0.3
    assert abs(gaps.mean() / plain_gaps.mean() - 1) < 0.05
    # sigma 0 is the model without variation, record for record
    still = simulate(tr, cfg, LORA_TERMS_PROFILE.with_changes(
        step_jitter={"sigma": 0.0, "window_ms": window_ms}, name="still"))
    assert [key(r) for r in still.records] == [key(r) for r in plain.records]
