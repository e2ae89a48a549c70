"""Calibration and validation against the session's real vLLM CPU server (`vllm_server`).

A smoke calibration (`--budget 30s`) must write a loadable profile with provenance, a plot and
the server's KV capacity; `validate` must then replay a small trace twice on the server, run
the twin (configured from the server's static facts) and the baseline, and write the report.
No timing thresholds: fidelity figures belong to bench/fidelity.py.
"""
from __future__ import annotations

import json
import os

import pytest

from twinbench.cli.main import main
from twinbench.twin.profile import Profile

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "data", "calibrate", "small.workload.json")


@pytest.fixture(scope="module")
def calibrated(vllm_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrate") / "tiny.json"
    flags = vllm_server.server_config()
    rc = main(["calibrate", "--base-url", vllm_server.base_url, "--budget", "30s", "-o",
               str(out), "--quiet", "--adapters", "a0,a1",
               "--max-num-seqs", str(flags["max_num_seqs"]),
               "--max-num-batched-tokens", str(flags["max_num_batched_tokens"])])
    return rc, out


def test_smoke_calibration_writes_a_profile_with_provenance(calibrated, vllm_server):
    rc, out = calibrated
    assert rc == 0
    prof = Profile.load(str(out))
    flags = vllm_server.server_config()
    # static facts come from the server: KV capacity and max_loras as it reports them
    assert prof.num_gpu_blocks(flags["block_size"], flags["max_loras"], 16) == \
        vllm_server.num_gpu_blocks
    assert prof.provenance["server"]["max_loras"] == flags["max_loras"]
    assert prof.provenance["server"]["vllm_version"].startswith("0.32")
    assert prof.provenance["server"]["adapters"] == {"a0": 8, "a1": 16}  # adapter_config.json
    assert prof.provenance["plan"]["points"] and prof.provenance["raw"]["fit_rows"]
    # whatever the machine's speed, the plan stops at the budget and the fit has decode steps
    assert "decode" in {r["kind"] for r in prof.provenance["raw"]["fit_rows"]}
    planned = len(prof.provenance["plan"]["points"])
    assert len(prof.provenance["plan"]["ran"]) + len(prof.provenance["plan"]["skipped"]) == \
        planned
    q = prof.provenance["fit"]["quality"]["all"]
    assert q["rows"] == len(prof.provenance["raw"]["fit_rows"])
    assert os.path.getsize(str(out).replace(".json", ".png")) > 10_000
    st = prof.section("step_time")
    assert st["base_ms"] > 0


def test_validate_replays_real_twin_and_baseline(calibrated, vllm_server, tmp_path):
    rc, profile = calibrated
    assert rc == 0
    outdir = tmp_path / "v"
    code = main(["validate", WORKLOAD, "--profile", str(profile), "--base-url",
                 vllm_server.base_url, "--repeat", "2", "-o", str(outdir), "--quiet",
                 "--drain-limit", "120", "--fail-above", "output_throughput:200"])
    assert code == 0  # SMAPE never exceeds 200 %: the bound cannot fail
    for name in ("real-1.jsonl", "real-2.jsonl", "twin.jsonl", "baseline.jsonl",
                 "validation.json", "validation.html"):
        assert (outdir / name).exists(), name
    doc = json.loads((outdir / "validation.json").read_text())
    cfg = doc["twin_server_config"]
    # the twin is configured from the server's facts read before the runs
    assert cfg["num_gpu_blocks"] == vllm_server.num_gpu_blocks
    assert cfg["max_loras"] == vllm_server.server_config()["max_loras"]
    assert cfg["max_num_seqs"] == vllm_server.server_config()["max_num_seqs"]
    m = doc["fidelity"]["metrics"]
    for key in ("output_throughput", "median_itl_ms", "median_ttft_ms", "p99_ttft_ms"):
        assert len(m[key]["real"]) == 2
        assert m[key]["real_vs_real"] is not None and m[key]["twin_vs_real"] is not None
        assert m[key]["baseline_vs_real"] is not None
    assert set(doc["fidelity"]["starvation"]) >= {"a0", "a1", "a2"}
    html = (outdir / "validation.html").read_text()
    assert "twin vs real" in html and "<img" in html
    # a calibrated profile has speed variation: the twin is the mean of five seeded runs
    assert Profile.load(str(profile)).data["step_jitter"]["sigma"] > 0
    assert len(doc["runs"]["twin_other_seeds"]) == 4
    assert all(os.path.exists(p) for p in doc["runs"]["twin_other_seeds"])
    assert any("mean of 5" in n for n in doc["fidelity"]["notes"])
    # two real runs leave none to score in the twin's place (that needs three)
    assert doc["bounds_crossed_by_real_runs"] == []


def test_validate_user_errors_exit_2(tmp_path, capsys):
    assert main(["validate", WORKLOAD, "--profile", str(tmp_path / "missing.json"),
                 "--base-url", "http://127.0.0.1:9", "-o", str(tmp_path / "v")]) == 2
    assert "missing.json" in capsys.readouterr().err
    for seeds in ("3", "0"):  # the H100 profile's steps do not vary: one twin run is all
        assert main(["validate", WORKLOAD, "--profile", "llama-3.1-8b-h100", "--twin-seeds",
                     seeds, "--base-url", "http://127.0.0.1:9", "-o", str(tmp_path / "v")]) == 2
        assert "--twin-seeds" in capsys.readouterr().err
    assert main(["calibrate", "--base-url", "http://127.0.0.1:9", "-o",
                 str(tmp_path / "p.json"), "--budget", "1s"]) == 2
    assert "--budget" in capsys.readouterr().err
