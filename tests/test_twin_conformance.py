"""Differential test: the twin's scheduler vs vLLM 0.32's own `Scheduler`, step by step.

Random request streams (adapters over max_loras, chunked prefill with and without
long_prefill_token_threshold, KV pressure with preemption, base-model requests, chunked
prefill off) go into both; per step, the scheduled requests with their token counts,
admissions (new / resumed), preemptions and the adapter set must be identical.
vLLM runs in its own environment through tests/tools/vllm_scheduler_driver.py.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from twinbench.twin.config import ServerConfig
from twinbench.twin.engine import Engine

DRIVER = Path(__file__).parent / "tools" / "vllm_scheduler_driver.py"
MIN_STEPS = 10_000


def random_case(seed: int) -> dict:
    rng = random.Random(seed)
    bs = 16
    max_len = rng.choice([128, 256, 512])
    chunked = rng.random() < 0.8
    max_seqs = rng.choice([2, 4, 8, 16])
    batched = rng.choice([32, 64, 128, 256]) if chunked else max_len
    batched = max(batched, max_seqs)
    threshold = rng.choice([0, 0, 16, 48]) if chunked else 0
    blocks = -(-max_len // bs) + 1 + rng.choice([0, 4, 12, 40, 200])
    max_loras = rng.choice([1, 2, 3])
    n_adapters = rng.choice([0, 2, 4, 6])
    n_req = rng.randint(15, 45)
    span = rng.choice([30, 100, 250])
    reqs = []
    for j in range(n_req):
        a = rng.randrange(n_adapters) if n_adapters and rng.random() < 0.8 else None
        prompt = min(max_len - 1, max(1, int(rng.expovariate(1 / (max_len / 4)))))
        reqs.append({"id": f"r{j}", "arrival_step": rng.randrange(span), "prompt": prompt,
                     "output": rng.randint(1, 60), "adapter": None if a is None else f"a{a}",
                     "lora_id": 0 if a is None else a + 1})
    # a third of the cases share prompt prefixes with prefix caching on
    prefix = rng.random() < 0.33
    if prefix:
        for r in reqs:
            family, depth = rng.randrange(4), rng.randrange(5)
            r["prefix"] = [family * 100 + d for d in range(depth)][: (max_len - 1) // 32]
            r["prompt"] = min(max_len - 1, max(r["prompt"], 32 * len(r["prefix"]) + rng.randint(1, 40)))
    reqs.sort(key=lambda r: r["arrival_step"])
    config = {"enable_prefix_caching": prefix, "prefix_block_tokens": 32 if prefix else 0,"max_num_seqs": max_seqs, "max_num_batched_tokens": batched,
              "max_model_len": max_len, "enable_chunked_prefill": chunked,
              "long_prefill_token_threshold": threshold, "num_gpu_blocks": blocks,
              "block_size": bs, "max_loras": max_loras, "max_lora_rank": 16}
    return {"config": config, "requests": reqs}


def twin_steps(case: dict, mode: str = "step") -> list[dict]:
    """The twin's per-step decisions for a case, in the driver's format."""
    c = case["config"]
    cfg = ServerConfig(max_num_seqs=c["max_num_seqs"],
                       max_num_batched_tokens=c["max_num_batched_tokens"],
                       max_model_len=c["max_model_len"],
                       enable_chunked_prefill=c["enable_chunked_prefill"],
                       long_prefill_token_threshold=c["long_prefill_token_threshold"],
                       num_gpu_blocks=c["num_gpu_blocks"], block_size=c["block_size"],
                       enable_prefix_caching=c["enable_prefix_caching"],
                       max_loras=c["max_loras"], max_lora_rank=c["max_lora_rank"])
    log: list[dict] = []
    eng = Engine(cfg, "llama-3.1-8b-h100", coalesce=(mode == "coalesced"), step_log=log,
                 emit_tokens=False, prefix_block_tokens=c["prefix_block_tokens"])
    by_step: dict[int, list[dict]] = {}
    for r in case["requests"]:
        by_step.setdefault(r["arrival_step"], []).append(r)
    last = max(by_step) if by_step else -1
    steps = []
    k = 0
    while True:
        for r in by_step.get(k, []):
            eng.submit(r["id"], eng.now_ns, r["prompt"], r["output"], r["adapter"],
                       prefix_blocks=r.get("prefix"), rank=c["max_lora_rank"])
        eng._ingest()
        if not eng.running and not eng.waiting:
            if k > last:
                break
            k += 1
            continue
        n = len(log)
        eng._step()
        for entry in log[n:]:
            steps.append({"k": k, "scheduled": entry["scheduled"], "new": entry["new"],
                          "resumed": sorted(entry["resumed"]),
                          "preempted": sorted(entry["preempted"]),
                          "loras": sorted(entry["adapters"])})
        k += 1
    return steps


def compare_steps(vllm: list[dict], twin: list[dict]) -> tuple[int, int, str | None]:
    """(matching steps, compared steps, first difference)."""
    same = 0
    first = None
    for a, b in zip(vllm, twin):
        if a == b:
            same += 1
        elif first is None:
            first = f"vLLM {a}\ntwin {b}"
    total = max(len(vllm), len(twin))
    if first is None and len(vllm) != len(twin):
        first = f"step counts differ: vLLM {len(vllm)}, twin {len(twin)}"
    return same, total, first


@pytest.mark.realserver
@pytest.mark.timeout(300)
def test_twin_scheduler_matches_vllm_step_by_step():
    from twinbench.backends.vllm_cpu import ensure_env

    python = ensure_env(log=sys.stderr)  # installs the vLLM CPU environment on a new machine
    cases = []
    twin = []
    total = 0
    seed = 0
    while total < MIN_STEPS:
        case = random_case(seed)
        steps = twin_steps(case)
        cases.append(case)
        twin.append(steps)
        total += len(steps)
        seed += 1
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([str(python), str(DRIVER)], input=json.dumps(cases),
                          capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vllm = json.loads(proc.stdout)
    same = compared = 0
    diffs = []
    for i, (v, t) in enumerate(zip(vllm, twin)):
        s, n, first = compare_steps(v, t)
        same += s
        compared += n
        if first:
            diffs.append(f"case {i} (seed {i}, config {cases[i]['config']}):\n{first}")
    share = 100.0 * same / compared
    flat = [s for steps in vllm for s in steps]
    preempting = sum(1 for s in flat if s["preempted"])
    resuming = sum(1 for s in flat if s["resumed"])
    chunked = sum(1 for s in flat if any(n > 1 for _, n in s["scheduled"]))
    print(f"\nconformance: {same}/{compared} steps identical ({share:.2f} %) over "
          f"{len(cases)} random workloads; vLLM steps with preemptions {preempting}, "
          f"resumptions {resuming}, prefill chunks {chunked}; "
          f"{sum(c['config']['enable_prefix_caching'] for c in cases)} cases with prefix caching",
          file=sys.stderr)
    assert compared >= MIN_STEPS
    assert preempting > 10 and resuming > 10  # the workloads exercise KV pressure
    assert not diffs, f"{share:.2f} % identical; first differences:\n" + "\n".join(diffs[:3])
