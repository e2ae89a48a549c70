"""Training data for the surrogate: twin runs over many workloads drawn from one pool.

A drawn workload is a random subset of the pool's adapters (random size, log-uniform) with
all rates scaled by a random factor; each is run on the twin under a few random `max_loras`.
Held-out scores are computed on whole workloads never seen in training.
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass

import numpy as np

from twinbench.advisor import surrogate as sg
from twinbench.advisor.adapter_advisor import (WorkloadSlice, memory_exclusion, point_config,
                                               pool_adapters)
from twinbench.advisor.executor import map_points
from twinbench.advisor.twin_runs import TwinJob, run_twin_point


@dataclass(frozen=True)
class PlannedRun:
    workload: int
    indices: tuple[int, ...]
    rate_scale: float
    slots: int


def mean_lengths(raw: dict, base_dir: str | None, seed: int) -> tuple[float, float]:
    """Mean prompt and output tokens of the workload's length model (from a short sample)."""
    trace = WorkloadSlice(raw, base_dir, n=min(8, len(pool_adapters(raw, 8)) or 1),
                          seed=seed, duration_s=600.0).build()
    if not len(trace):
        return 1.0, 1.0
    return float(trace.prompt_tokens.mean()), float(trace.output_tokens.mean())


def plan_runs(pool_size: int, runs: int, seed: int, configs_per_workload: int = 3,
              rate_scale: tuple[float, float] = (0.5, 2.0)) -> list[PlannedRun]:
    rng = np.random.default_rng(seed)
    plan: list[PlannedRun] = []
    w = 0
    while len(plan) < runs:
        n = int(round(math.exp(rng.uniform(0.0, math.log(pool_size)))))
        n = min(max(n, 1), pool_size)
        idx = tuple(sorted(rng.choice(pool_size, size=n, replace=False).tolist()))
        scale = float(math.exp(rng.uniform(math.log(rate_scale[0]), math.log(rate_scale[1]))))
        for slots in sorted(set(rng.integers(1, n + 1, size=configs_per_workload).tolist())):
            if len(plan) < runs:
                plan.append(PlannedRun(w, idx, scale, int(slots)))
        w += 1
    return plan


def replica_load(pool: list[dict], indices, rate_scale: float, lengths) -> sg.ReplicaLoad:
    return sg.ReplicaLoad(tuple(float(pool[i]["rate"]) * rate_scale for i in indices),
                          tuple(int(pool[i].get("rank", 16)) for i in indices),
                          lengths[0], lengths[1])


def collect(*, raw: dict, base_dir: str | None, profile, base_config, executor, runs: int,
            pool_size: int, duration_s: float, seed: int = 0, max_lora_rank: int | None = None,
            progress: bool = False) -> list[sg.Sample]:
    pool = pool_adapters(raw, pool_size)
    rank = max_lora_rank or max(int(a.get("rank", 16)) for a in pool)
    lengths = mean_lengths(raw, base_dir, seed)
    exclude = memory_exclusion(profile, base_config, rank)
    plan = []
    for p in plan_runs(len(pool), runs, seed):  # slots that leave too little KV: fewer slots
        slots = p.slots
        while slots > 1 and exclude(len(p.indices), slots):
            slots -= 1
        plan.append(PlannedRun(p.workload, p.indices, p.rate_scale, slots))
    jobs = [TwinJob(WorkloadSlice(raw, base_dir, len(p.indices), seed, duration_s, p.indices,
                                  p.rate_scale),
                    point_config(base_config, len(p.indices), p.slots, rank), profile,
                    window=(0.0, duration_s), horizon_s=duration_s + 60.0,
                    token_timestamps="sketch", tag=k)
            for k, p in enumerate(plan)]
    results = map_points(run_twin_point, jobs, executor, desc="surrogate runs",
                         progress=progress)
    samples = []
    for p, r in zip(plan, results):
        load = replica_load(pool, p.indices, p.rate_scale, lengths)
        x = sg.features(load, p.slots, profile.kv_capacity_tokens(p.slots, rank))
        samples.append(sg.Sample(x, r.metric("output_throughput"), r.starving,
                                 {"workload": p.workload, "n": len(p.indices),
                                  "slots": p.slots, "rate_scale": p.rate_scale,
                                  "wall_s": r.wall_s}))
    return samples


@dataclass
class SurrogateBundle:
    """A trained model with what it needs to answer: the pool's lengths and rank, its score."""

    model: sg.Surrogate
    profile: str
    mean_prompt: float
    mean_output: float
    max_lora_rank: int
    score: dict
    explain: dict

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            pickle.dump(self, f)

    @staticmethod
    def load(path: str) -> "SurrogateBundle":
        """Unpickles: only load surrogate files you made yourself."""
        from twinbench.traces.errors import TwinbenchError
        try:
            with open(path, "rb") as f:
                bundle = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as e:
            raise TwinbenchError(f"--surrogate {path}: cannot read a surrogate ({e})") from None
        if not isinstance(bundle, SurrogateBundle):
            raise TwinbenchError(f"--surrogate {path}: not a twinbench surrogate file")
        return bundle
