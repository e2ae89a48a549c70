"""`twinbench replay` on the twin, `TwinBackend`, and the multi-replica twin."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from twinbench.backends.base import ReplayOptions
from twinbench.backends.twin import TwinBackend
from twinbench.replay.run import replay_to_list
from twinbench.reports.runfile import read_run
from twinbench.traces.core import Adapter, Trace
from twinbench.twin import simulate, simulate_cluster
from twinbench.twin.config import ServerConfig


def small_trace(n=120, n_adapters=4, seed=0) -> Trace:
    rng = np.random.default_rng(seed)
    return Trace(arrival_s=np.sort(rng.uniform(0, 20, n)),
                 adapter_idx=rng.integers(-1, n_adapters, n),
                 prompt_tokens=rng.integers(10, 800, n), output_tokens=rng.integers(1, 150, n),
                 adapters=[Adapter(f"a{k}", (8, 16, 32)[k % 3]) for k in range(n_adapters)])


def twinbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinbench.cli.main", *args],
                          capture_output=True, text=True, timeout=120)


def test_replay_command_writes_a_run_file(tmp_path):
    trace_path = tmp_path / "t.csv"
    trace_path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                          + "".join(f"2023-11-16 18:15:{10 + i:02d}.000,{100 + 7 * i},{5 + i}\n"
                                    for i in range(30)))
    out = tmp_path / "run.jsonl"
    p = twinbench("replay", str(trace_path), "--adapters", "uniform:3", "--max-loras", "2",
                  "--max-lora-rank", "32", "-o", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "Successful requests" in p.stdout
    run = read_run(out)
    assert not run.partial and len(run.records) == 30
    assert run.header["backend"]["kind"] == "twin"
    assert run.info["server_config"]["max_loras"] == 2
    assert all(r.status == "ok" and len(r.chunk_times) == r.output_tokens for r in run.records)
    # never clobbers
    again = twinbench("replay", str(trace_path), "-o", str(out), "--quiet")
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr


def test_replay_user_errors_are_one_line(tmp_path):
    p = twinbench("replay", "--profile", "nope", "--quiet")
    assert p.returncode == 2 and "nope" in p.stderr and "Traceback" not in p.stderr
    p = twinbench("replay", "--max-num-seqs", "4096", "--quiet")
    assert p.returncode == 2 and "--max-num-batched-tokens" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_twin_backend_through_replay_to_list():
    tr = small_trace()
    backend = TwinBackend("qwen-2.5-7b-h100", ServerConfig(max_loras=2, max_lora_rank=32))
    assert backend.realtime is False
    records, info = replay_to_list(tr, backend, ReplayOptions(warmup_requests=5, quiet=True))
    assert len(records) == len(tr)
    assert sum(r.warmup for r in records) == 5
    assert info.backend == "twin" and info.profile["name"] == "qwen-2.5-7b-h100"
    direct = {r.id: r.end_s for r in simulate(tr, backend.config, backend.profile).records}
    assert {r.id: r.end_s for r in records} == direct


def test_duration_cancels_later_arrivals():
    tr = small_trace()
    backend = TwinBackend("llama-3.1-8b-h100", ServerConfig(max_loras=4, max_lora_rank=32))
    records, _ = replay_to_list(tr, backend, ReplayOptions(duration_s=10.0, quiet=True))
    late = [r for r in records if r.arrival_s >= 10.0]
    assert late and all(r.status == "cancelled" and r.sent_s is None for r in late)
    assert all(r.status == "ok" for r in records if r.arrival_s < 10.0)
    # a request arriving exactly at the duration is not sent, as on the real backend
    on_edge = Trace(arrival_s=np.arange(20, dtype=np.float64), adapter_idx=np.full(20, -1),
                    prompt_tokens=np.full(20, 64), output_tokens=np.full(20, 8))
    edge, _ = replay_to_list(on_edge, backend, ReplayOptions(duration_s=10.0, quiet=True))
    assert sorted(r.arrival_s for r in edge if r.status == "ok") == list(range(10))


def test_requests_never_dispatched_after_duration_are_not_offered_load(tmp_path):
    # a run cut by --duration keeps a record of every later request (cancelled), but the
    # server was never offered them: they must not turn every adapter into a starving one
    from twinbench.replay.run import replay_to_file
    from twinbench.reports.load import load_path
    from twinbench.reports.metrics import summarize

    tr = small_trace()
    backend = TwinBackend("llama-3.1-8b-h100", ServerConfig(max_loras=4, max_lora_rank=32))
    out = tmp_path / "cut.jsonl"
    replay_to_file(tr, backend, ReplayOptions(duration_s=10.0, quiet=True), str(out))
    s = summarize(load_path(out), drain_limit_s=60.0)
    sent = tr.arrival_s < 10.0
    assert 0 < sent.sum() < len(tr)
    assert s.metrics["offered_requests"] == sent.sum()
    assert s.metrics["offered_tokens"] == int(tr.prompt_tokens[sent].sum()
                                              + tr.output_tokens[sent].sum())
    assert s.metrics["served_token_ratio"] == 1.0 and s.metrics["never_started_requests"] == 0
    assert s.starvation.starving_adapters == [] and not s.starvation.run_starving
    assert s.metrics["cancelled_requests"] == len(tr) - sent.sum()
    assert any("never dispatched" in n for n in s.notes)


@pytest.mark.parametrize("router", ["round-robin", "least-outstanding", "adapter-affinity"])
def test_cluster_routes_every_request_once(router):
    tr = small_trace(300, 6)
    cfg = ServerConfig(max_loras=2, max_lora_rank=32, max_num_seqs=16)
    res = simulate_cluster(tr, [cfg] * 3, "llama-3.1-8b-h100", router=router)
    assert sorted(r.id for r in res.records) == sorted(str(i) for i in range(300))
    assert {r.replica for r in res.records} == {0, 1, 2}
    assert all(r.status == "ok" for r in res.records)
    assert len(res.info.extra["replicas"]) == 3
    if router == "adapter-affinity":
        for r in res.records:
            if r.adapter is not None:
                assert r.replica == int(r.adapter[1:]) % 3
    if router == "round-robin":
        order = np.argsort(tr.arrival_s, kind="stable")
        by_id = {r.id: r.replica for r in res.records}
        assert [by_id[str(i)] for i in order[:6]] == [0, 1, 2, 0, 1, 2]


def test_cluster_of_one_equals_simulate():
    tr = small_trace(150, 3, seed=4)
    cfg = ServerConfig(max_loras=2, max_lora_rank=32)
    one = simulate_cluster(tr, [cfg], "llama-3.1-8b-h100", router="least-outstanding")
    ref = simulate(tr, cfg, "llama-3.1-8b-h100")
    assert {r.id: r.chunk_times.tolist() for r in one.records} == \
        {r.id: r.chunk_times.tolist() for r in ref.records}
