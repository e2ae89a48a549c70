"""The batching configuration advisor (arXiv 2503.08311, done on the twin or a real server).

`advise_batch` sweeps `max_num_seqs` through an executor, applies the chosen rule, sizes KV
to the p99 KV usage at the chosen batch plus a margin, and (optionally) asks whether N
replicas sharing the GPU, each with 1/N of its memory, beat one instance.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from twinbench.advisor.batch_rules import THROUGHPUT, Rule
from twinbench.advisor.batch_sweep import BatchSweep, sweep_batch
from twinbench.advisor.executor import map_points
from twinbench.advisor.kv_advice import KVAdvice, MemoryFacts, recommend_kv
from twinbench.advisor.loads import saturating_trace
from twinbench.advisor.twin_runs import PointResult, TwinJob, run_twin_point
from twinbench.traces.core import Trace


@dataclass
class BatchAdvice:
    sweep: BatchSweep
    points: dict[int, PointResult]
    kv: KVAdvice | None
    replication: list[dict] = field(default_factory=list)
    load: str = ""

    def to_dict(self) -> dict:
        return {"load": self.load, "sweep": self.sweep.to_dict(),
                "kv": None if self.kv is None else self.kv.to_dict(),
                "replication": self.replication}


def config_for_batch(base: Any, batch: int) -> Any:
    """The base config with max_num_seqs = batch (batched tokens raised if vLLM would refuse)."""
    return replace(base, max_num_seqs=batch,
                   max_num_batched_tokens=max(base.max_num_batched_tokens, batch))


def twin_batch_jobs(batches: list[int], *, trace: Trace | None, base_config: Any, profile: Any,
                    seed: int, requests_per_slot: int) -> list[TwinJob]:
    jobs = []
    for b in batches:
        if trace is None:
            t = saturating_trace(b, seed, requests_per_slot=requests_per_slot)
            jobs.append(TwinJob(t, config_for_batch(base_config, b), profile,
                                saturated_window=True, tag=b))
        else:
            jobs.append(TwinJob(trace, config_for_batch(base_config, b), profile, tag=b))
    return jobs


def advise_batch(*, rule: Rule, b_max: int, executor, profile: Any, base_config: Any,
                 trace: Trace | None = None, seed: int = 0, kv_margin: float = 0.1,
                 requests_per_slot: int = 8, replicas_max: int = 1, progress: bool = False,
                 parallel: int = 2,
                 run_points: Callable[[list[int]], list[PointResult]] | None = None
                 ) -> BatchAdvice:
    """Sweep on the twin (default) or through `run_points` (e.g. a real server per point)."""
    results: dict[int, PointResult] = {}

    def default_run(batches: list[int]) -> list[PointResult]:
        jobs = twin_batch_jobs(batches, trace=trace, base_config=base_config, profile=profile,
                               seed=seed, requests_per_slot=requests_per_slot)
        return map_points(run_twin_point, jobs, executor, desc="max_num_seqs", progress=progress)

    runner = run_points or default_run

    def evaluate(batches: list[int]) -> list[dict]:
        out = []
        for b, r in zip(batches, runner(batches)):
            results[b] = r
            out.append(r.metrics)
        return out

    sweep = sweep_batch(evaluate, rule, b_max, parallel=parallel)
    kv = None
    chosen = sweep.choice.batch
    if chosen is not None and results[chosen].kv_blocks_p99 is not None:
        cfg = config_for_batch(base_config, chosen)
        facts = None if profile is None else MemoryFacts.from_profile(
            profile, cfg.max_loras if cfg.enable_lora else 0, cfg.max_lora_rank)
        current = results[chosen].kv_blocks_total or (
            facts.blocks(cfg.block_size) if facts is not None else None)
        kv = recommend_kv(results[chosen].kv_blocks_p99, margin=kv_margin,
                          block_size=cfg.block_size, facts=facts, current_blocks=current)
    advice = BatchAdvice(sweep, results, kv, load="user trace" if trace is not None else
                         f"closed-loop saturating ({requests_per_slot} requests per slot, "
                         "all queued at t=0)")
    if replicas_max > 1 and chosen is not None and profile is not None and run_points is None:
        advice.replication = replication_what_if(
            chosen, replicas_max, executor=executor, profile=profile, base_config=base_config,
            trace=trace, seed=seed, requests_per_slot=requests_per_slot, progress=progress)
    return advice


def replication_what_if(batch: int, replicas_max: int, *, executor, profile: Any,
                        base_config: Any, trace: Trace | None, seed: int,
                        requests_per_slot: int, progress: bool = False) -> list[dict]:
    """N = 1..replicas_max instances on one GPU, each with 1/N of its memory and batch limit
    `batch`, behind a round-robin router; the profile's `replica_bandwidth_share` says how
    much the memory-bound step terms slow down when N share the GPU (Profile.for_shared_gpu)."""
    jobs, rows = [], []
    for n in range(1, replicas_max + 1):
        shared = profile.for_shared_gpu(n)
        cfg = config_for_batch(base_config, batch)
        if cfg.gpu_memory_utilization is not None:  # the user's share of the GPU, split N ways
            cfg = replace(cfg, gpu_memory_utilization=cfg.gpu_memory_utilization / n)
        blocks = shared.num_gpu_blocks(cfg.block_size, cfg.max_loras if cfg.enable_lora else 0,
                                       cfg.max_lora_rank, cfg.enable_lora,
                                       cfg.gpu_memory_utilization)
        if blocks * cfg.block_size < shared.max_model_len:
            rows.append({"replicas": n, "fits": False, THROUGHPUT: None,
                         "note": "KV per replica cannot hold one max_model_len sequence"})
            continue
        t = trace if trace is not None else saturating_trace(
            batch * n, seed, requests_per_slot=requests_per_slot)
        jobs.append(TwinJob(t, cfg, shared, saturated_window=trace is None,
                            replicas=tuple([cfg] * n) if n > 1 else (), router="round-robin",
                            tag=n))
        rows.append({"replicas": n, "fits": True, "num_gpu_blocks_per_replica": blocks})
    results = {r.tag: r for r in map_points(run_twin_point, jobs, executor, desc="replicas",
                                            progress=progress)}
    for row in rows:
        r = results.get(row["replicas"])
        if r is not None:
            row.update({k: r.metrics.get(k) for k in (THROUGHPUT, "mean_itl_ms", "p99_itl_ms",
                                                      "p99_ttft_ms")})
    one = next((r[THROUGHPUT] for r in rows if r["replicas"] == 1 and r.get(THROUGHPUT)), None)
    for row in rows:
        if one and row.get(THROUGHPUT):
            row["gain_vs_one_pct"] = 100.0 * (row[THROUGHPUT] / one - 1.0)
    return rows
