"""Placement of adapters over GPUs (follow-up of the seed paper, arXiv 2602.24044).

Greedy packing on the fewest replicas: adapters sorted by rate (hottest first) fill one
replica at a time. For each replica the surrogate proposes how many of the remaining
adapters fit (and with which `max_loras`); the twin confirms, moving the count along the
starvation frontier until a twin run says "fits" and one more adapter says "starves" (or
nothing is left). Each replica is one GPU, so replicas never interact: the deployment run
simulates every replica on its own adapters' requests of one common trace (exactly what a
static adapter→replica router does).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from twinbench.advisor import surrogate as sg
from twinbench.advisor.adapter_advisor import (WorkloadSlice, memory_exclusion, point_config,
                                               pool_adapters, pool_limit)
from twinbench.advisor.executor import map_points
from twinbench.advisor.search import feasibility_frontier
from twinbench.advisor.twin_runs import PointResult, TwinJob, run_twin_point


@dataclass
class ReplicaPlan:
    adapters: list[str]
    indices: list[int]
    max_loras: int
    max_cpu_loras: int
    max_num_seqs: int
    twin: PointResult | None = None
    predicted_tput: float | None = None

    def to_dict(self) -> dict:
        d = {"adapters": self.adapters, "max_loras": self.max_loras,
             "max_cpu_loras": self.max_cpu_loras, "max_num_seqs": self.max_num_seqs,
             "predicted_output_throughput": self.predicted_tput}
        if self.twin is not None:
            d["twin"] = {**self.twin.metrics, "starving": self.twin.starving}
        return d


@dataclass
class PlacementPlan:
    replicas: list[ReplicaPlan]
    fits: bool                      # within gpus_max
    deployment: dict = field(default_factory=dict)
    twin_runs: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"replicas": [r.to_dict() for r in self.replicas], "fits": self.fits,
                "deployment": self.deployment, "twin_runs": self.twin_runs,
                "notes": self.notes}


def greedy_pack(order: list[int], *, predict_fit: Callable[[list[int]], int | None],
                twin_fit: Callable[[list[int], int], bool], choose_slots: Callable[[list[int]], int],
                max_replicas: int) -> tuple[list[tuple[list[int], int]], bool]:
    """Pack `order` into replicas. `predict_fit(rest)` = how many of `rest` the surrogate
    thinks fit (None: no guess); `twin_fit(adapters, slots)` = the twin's verdict;
    `choose_slots(adapters)` = max_loras to run them with. Returns ([(adapters, slots)],
    all placed). Pure: tests drive it with synthetic verdicts."""
    rest = list(order)
    placed: list[tuple[list[int], int]] = []
    while rest and len(placed) < max_replicas:
        verdicts: dict[int, bool] = {}
        slots_for: dict[int, int] = {}

        def fits(k: int) -> bool:
            if k not in verdicts:
                slots_for[k] = choose_slots(rest[:k])
                verdicts[k] = twin_fit(rest[:k], slots_for[k])
            return verdicts[k]

        guess = predict_fit(rest)
        guess = min(max(guess or 1, 1), len(rest))
        fits(guess)
        if verdicts[guess] and guess < len(rest):
            fits(guess + 1)
            if verdicts[guess + 1]:  # the surrogate was too careful: double up from there
                hi = guess + 1
                while hi < len(rest) and fits(min(2 * hi, len(rest))):
                    hi = min(2 * hi, len(rest))
        good, _ = feasibility_frontier(fits, 1, len(rest), verdicts)
        if good is None:
            return placed, False  # one adapter alone starves a replica
        placed.append((rest[:good], slots_for[good]))
        rest = rest[good:]
    return placed, not rest


def advise_placement(*, workload_raw: dict, base_dir: str | None, profile: Any,
                     base_config: Any, executor, bundle=None, gpus_max: int = 8,
                     seed: int = 0, duration_s: float | None = None,
                     progress: bool = False) -> PlacementPlan:
    n_pool = pool_limit(workload_raw) or int(workload_raw["adapters"]["count"])
    pool = pool_adapters(workload_raw, n_pool)
    rank = max(int(a.get("rank", 16)) for a in pool)
    duration = float(duration_s or workload_raw["duration_s"])
    order = sorted(range(n_pool), key=lambda i: (-float(pool[i]["rate"]), i))
    exclude = memory_exclusion(profile, base_config, rank)
    runs: dict[tuple, PointResult] = {}
    lengths = None
    if bundle is not None:
        lengths = (bundle.mean_prompt, bundle.mean_output)

    def slot_choices(k: int) -> list[int]:
        return [s for s in range(1, k + 1) if not exclude(k, s)] or [1]

    def load_of(idx: list[int]) -> sg.ReplicaLoad:
        return sg.ReplicaLoad(tuple(float(pool[i]["rate"]) for i in idx),
                              tuple(int(pool[i].get("rank", 16)) for i in idx), *lengths)

    def surrogate_slots(idx: list[int]) -> tuple[int | None, float]:
        choices = slot_choices(len(idx))
        caps = [profile.kv_capacity_tokens(s, rank) for s in choices]
        slots, tput, _ = sg.best_slots(bundle.model, load_of(idx), choices, caps)
        return slots, tput

    def predict_fit(rest: list[int]) -> int | None:
        if bundle is None:
            return None
        ok = lambda k: surrogate_slots(rest[:k])[0] is not None  # noqa: E731
        good, _ = feasibility_frontier(ok, 1, len(rest))
        return good

    def choose_slots(idx: list[int]) -> int:
        if bundle is not None:
            slots, _ = surrogate_slots(idx)
            if slots is not None:
                return slots
        return max(slot_choices(len(idx)))  # the twin never starves more with more slots

    def twin_fit(idx: list[int], slots: int) -> bool:
        key = (tuple(idx), slots)
        if key not in runs:
            job = TwinJob(WorkloadSlice(workload_raw, base_dir, len(idx), seed, duration,
                                        tuple(idx)),
                          point_config(base_config, len(idx), slots, rank), profile,
                          window=(0.0, duration), horizon_s=duration + 60.0,
                          token_timestamps="sketch", tag=key)
            runs[key] = map_points(run_twin_point, [job], executor)[0]
        return not runs[key].starving

    placed, all_placed = greedy_pack(order, predict_fit=predict_fit, twin_fit=twin_fit,
                                     choose_slots=choose_slots, max_replicas=gpus_max)
    replicas = []
    for idx, slots in placed:
        rp = ReplicaPlan([pool[i]["name"] for i in idx], list(idx), slots, len(idx),
                         base_config.max_num_seqs, runs.get((tuple(idx), slots)))
        if bundle is not None:
            rp.predicted_tput = surrogate_slots(idx)[1]
        replicas.append(rp)
    plan = PlacementPlan(replicas, all_placed, twin_runs=len(runs))
    if not all_placed:
        left = n_pool - sum(len(r.indices) for r in replicas)
        plan.notes.append(f"{left} adapter(s) not placed: more than {gpus_max} GPU(s) needed"
                          if replicas else "a single adapter starves a whole replica")
    if replicas:
        plan.deployment = simulate_deployment(workload_raw, base_dir, profile, base_config,
                                              replicas, rank, seed, duration, executor,
                                              progress)
    return plan


def simulate_deployment(raw, base_dir, profile, base_config, replicas: list[ReplicaPlan],
                        rank: int, seed: int, duration: float, executor, progress: bool) -> dict:
    """All placed adapters in one trace; each replica simulated on its adapters' requests;
    metrics and starvation over the union of the records."""
    from twinbench.reports.metrics import summarize

    placed = [i for r in replicas for i in r.indices]
    trace = WorkloadSlice(raw, base_dir, len(placed), seed, duration, tuple(sorted(placed))).build()
    names = np.array([a.name for a in trace.adapters] + [None], dtype=object)
    jobs = []
    for k, r in enumerate(replicas):
        mine = np.isin(names[trace.adapter_idx], r.adapters)
        cfg = point_config(base_config, r.max_cpu_loras, r.max_loras, rank)
        jobs.append(TwinJob(trace.select(mine), cfg, profile, window=(0.0, duration),
                            horizon_s=duration + 60.0, tag=("records", k)))
    records = []
    for k, recs in enumerate(map_points(_records_of, jobs, executor, desc="deployment",
                                        progress=progress)):
        for rec in recs:
            rec.replica = k
        records += recs
    summary = summarize(records, window=(0.0, duration), time_series=False)
    starv = summary.starvation
    keep = ("output_throughput", "total_token_throughput", "request_throughput",
            "served_token_ratio", "mean_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "p99_itl_ms")
    return {**{k: summary.get(k) for k in keep},
            "starving_adapters": list(starv.starving_adapters) if starv else [],
            "run_starving": bool(starv.run_starving) if starv else None,
            "router": "static adapter->replica (each replica simulated on its own requests)",
            "requests": len(records)}


def _records_of(job: TwinJob) -> list:
    from twinbench.twin.simulation import simulate
    return simulate(job.trace, job.config, job.profile, horizon_s=job.horizon_s).records
