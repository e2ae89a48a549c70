"""The advisor wired to the real twin: answers checked against independent twin runs."""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

from twinbench.cli.main import main

HERE = os.path.dirname(__file__)
HOT = os.path.join(HERE, "data", "advisor", "hot_small.workload.json")


def run_json(capsys, argv):
    code = main(argv + ["--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_advise_batch_on_the_twin(tmp_path, capsys):
    code, advice = run_json(capsys, [
        "advise", "batch", "--profile", "opt-1.3b-h100", "--max-batch", "48",
        "--requests-per-slot", "2", "--replicas", "2", "--executor", "serial",
        "--out", str(tmp_path)])
    assert code == 0
    sweep = advice["sweep"]
    b = np.array(sweep["batch"])
    t = np.array(sweep["metrics"]["output_throughput"])
    itl = np.array(sweep["metrics"]["mean_itl_ms"])
    chosen = sweep["choice"]["max_num_seqs"]
    # the rule, recomputed here from the measured curve: every sampled B up to the choice
    # passes, the next sampled B (if any) fails
    eff = t / (b * t[0])
    limit = 5 * np.interp(32, b, itl)
    ok = (eff >= 0.2) & (itl <= limit)
    i = int(np.flatnonzero(b == chosen)[0])
    assert ok[: i + 1].all()
    assert i == len(b) - 1 or not ok[i + 1]
    kv = advice["kv"]
    assert kv["num_gpu_blocks"] == math.ceil(kv["p99_blocks_used"] * 1.1)
    assert 0 < kv["p99_blocks_used"] < kv["current_blocks"]
    assert any(f.startswith("--gpu-memory-utilization") for f in kv["flags"])
    assert (tmp_path / "batch.png").stat().st_size > 10_000
    # replication what-if: 2 replicas, each with half the memory (its own weights)
    from twinbench.twin.profile import Profile
    one, two = advice["replication"]
    half = Profile.load("opt-1.3b-h100").for_shared_gpu(2).num_gpu_blocks(16, 0, 16, False)
    assert two["replicas"] == 2 and two["num_gpu_blocks_per_replica"] == half
    assert one["output_throughput"] > 0 and two["output_throughput"] > 0
    assert two["gain_vs_one_pct"] == pytest.approx(
        100 * (two["output_throughput"] / one["output_throughput"] - 1))
    assert (tmp_path / "advice.json").exists()


def twin_verdict(raw, n, slots, duration):
    """An independent twin run of the first n adapters: (starving, output throughput).
    Without per-token times, as the search runs (window token counts interpolated)."""
    from twinbench.reports.metrics import summarize
    from twinbench.traces.workload import generate, parse_workload
    from twinbench.twin.config import ServerConfig
    from twinbench.twin.simulation import simulate

    d = json.loads(json.dumps(raw))
    d["adapters"]["count"] = n
    d["duration_s"] = duration
    trace = generate(parse_workload(d, os.path.dirname(HOT)), seed=0)
    cfg = ServerConfig(max_num_seqs=256, max_num_batched_tokens=2048, enable_lora=True,
                       max_loras=slots, max_cpu_loras=n, max_lora_rank=32)
    sim = simulate(trace, cfg, "llama-3.1-8b-h100", horizon_s=duration + 60,
                   token_timestamps="sketch")
    s = summarize(sim.records, window=(0, duration), time_series=False)
    starving = s.starvation.run_starving or bool(s.starvation.starving_adapters)
    return starving, s["output_throughput"]


def test_advise_adapters_answer_matches_direct_twin_runs(tmp_path, capsys):
    code, advice = run_json(capsys, [
        "advise", "adapters", "--workload", HOT, "--profile", "llama-3.1-8b-h100",
        "--duration", "60", "--coarse-points", "4", "--executor", "serial",
        "--out", str(tmp_path)])
    assert code == 0
    best = advice["best"]
    n, slots = best["max_cpu_loras"], best["max_loras"]
    raw = json.load(open(HOT))
    starving, tput = twin_verdict(raw, n, slots, 60)
    assert not starving
    assert tput == pytest.approx(best["output_throughput"])
    first = advice["first_starving_n_at_best_slots"]
    assert first == n + advice["margin_adapters"] + 1
    assert twin_verdict(raw, first, slots, 60)[0]
    # grown past the workload's 4 adapters until something starved
    assert advice["x_range"][1] > 4
    assert (tmp_path / "adapters.png").exists()


def test_twin_sweep_on_a_dask_local_cluster_matches_serial():
    distributed = pytest.importorskip("distributed")
    from twinbench.advisor.batch_advisor import twin_batch_jobs
    from twinbench.advisor.executor import map_points, open_executor
    from twinbench.advisor.twin_runs import run_twin_point
    from twinbench.twin.config import ServerConfig
    from twinbench.twin.profile import Profile

    jobs = twin_batch_jobs([1, 2, 4, 8, 16, 32], trace=None, profile=Profile.load("opt-1.3b-h100"),
                           base_config=ServerConfig(enable_lora=False), seed=0,
                           requests_per_slot=2)
    with open_executor("serial") as ex:
        serial = map_points(run_twin_point, jobs, ex)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  protocol="tcp://", dashboard_address=None) as cluster:
        with open_executor(cluster.scheduler_address.replace("tcp://", "dask://")) as ex:
            remote = map_points(run_twin_point, jobs, ex)
    assert [r.tag for r in remote] == [1, 2, 4, 8, 16, 32]
    assert [r.metrics for r in remote] == [r.metrics for r in serial]


@pytest.mark.timeout(240)
def test_advise_batch_on_a_real_server_per_point(tmp_path, capsys):
    """The twin behind HTTP (`twinbench serve`) stands in for vLLM: a server process is
    started from the template, health-checked, replayed against and stopped per point."""
    template = (f"{sys.executable} -m twinbench.cli.main serve --profile opt-1.3b-h100 "
                "--max-num-seqs {max_num_seqs} --port {port} --speed 50 --quiet "
                "--no-enable-lora")
    code, advice = run_json(capsys, [
        "advise", "batch", "--server-cmd", template, "--max-batch", "3",
        "--requests-per-slot", "2", "--out", str(tmp_path)])
    assert code in (0, 1)
    assert advice["sweep"]["batch"] == [1, 2, 3]
    assert all(x is not None and x > 0 for x in advice["sweep"]["metrics"]["output_throughput"])
    logs = sorted(p.name for p in tmp_path.glob("advise-server-b*.log"))
    assert logs == ["advise-server-b1.log", "advise-server-b2.log", "advise-server-b3.log"]


def test_user_errors_are_one_line(capsys):
    assert main(["advise", "batch", "--max-batch", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--profile" in err[0]
    assert main(["advise", "batch", "--profile", "opt-1.3b-h100", "--rule", "slo",
                 "--slo", "mean_itl_ms=5"]) == 2
    assert "percentile" in capsys.readouterr().err
    assert main(["advise", "batch", "--server-cmd", "vllm serve m"]) == 2
    assert "{max_num_seqs}" in capsys.readouterr().err
    assert main(["advise", "adapters", "--workload", HOT, "--profile", "no-such-profile"]) == 2


def test_advise_placement_every_adapter_once_and_deployment_not_starving(tmp_path, capsys):
    raw = json.load(open(HOT))
    raw["adapters"]["count"] = 12
    raw["duration_s"] = 60
    wl = tmp_path / "twelve.workload.json"
    wl.write_text(json.dumps(raw))
    code, plan = run_json(capsys, [
        "advise", "placement", "--workload", str(wl), "--profile", "llama-3.1-8b-h100",
        "--executor", "serial", "--out", str(tmp_path)])
    placed = [a for r in plan["replicas"] for a in r["adapters"]]
    assert sorted(placed) == sorted(f"lora-{k}" for k in range(12))
    assert len(plan["replicas"]) >= 2          # 12 hot adapters overflow one GPU
    for r in plan["replicas"]:
        assert r["max_cpu_loras"] == len(r["adapters"]) and r["max_loras"] <= len(r["adapters"])
        assert not r["twin"]["starving"]
    assert plan["fits"]
    assert code == (0 if not plan["deployment"]["starving_adapters"] else 1)
