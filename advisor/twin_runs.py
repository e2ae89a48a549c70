"""One sweep point = one twin run, as a picklable job for any executor.

`run_twin_point(job)` is a module-level function of a frozen job so process pools and Dask
workers can run it; it returns only a small `PointResult` (a few metrics, the starvation
verdict, the KV usage percentile), never the records, so results travel cheaply.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from twinbench.traces.core import Trace

KEPT_METRICS = ("output_throughput", "total_token_throughput", "request_throughput",
                "mean_itl_ms", "median_itl_ms", "p90_itl_ms", "p99_itl_ms",
                "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "p99_tpot_ms",
                "mean_tpot_ms", "served_token_ratio", "completed")


@dataclass(frozen=True)
class TwinJob:
    """A trace, a server config (or one per replica) and a profile, to simulate once."""

    trace: Any                           # a Trace, or a recipe with .build() -> Trace
    config: Any                          # twinbench.twin.config.ServerConfig
    profile: Any                         # twinbench.twin.profile.Profile
    window: tuple[float, float] | None = None
    horizon_s: float | None = None
    replicas: tuple = ()                 # >1 configs: a multi-replica twin behind `router`
    router: str | None = None
    kv_samples: int = 400                # time points for KV usage when the twin has none
    saturated_window: bool = False       # measure only while the queue is non-empty
    token_timestamps: str = "exact"      # "sketch": no per-token times (faster; ITL n/a)
    tag: Any = None                      # the caller's key for this point (e.g. (N, L))


@dataclass
class PointResult:
    tag: Any
    metrics: dict[str, float | None]
    starving: bool
    starvation_reason: str
    starving_adapters: list[str] = field(default_factory=list)
    kv_blocks_p99: float | None = None
    kv_blocks_total: int | None = None
    wall_s: float = 0.0
    info: dict = field(default_factory=dict)

    def metric(self, key: str) -> float:
        v = self.metrics.get(key)
        return float("nan") if v is None else float(v)


def _simulate(job: TwinJob):
    # Functions imported from their own modules: workers import nothing they do not use.
    trace = job.trace.build() if hasattr(job.trace, "build") else job.trace
    if job.replicas:
        try:
            from twinbench.twin.cluster import simulate_cluster
        except ImportError:
            return _independent_replicas(trace, job)
        return simulate_cluster(trace, list(job.replicas), job.profile,
                                router=job.router or "round-robin", horizon_s=job.horizon_s,
                                token_timestamps=job.token_timestamps)
    from twinbench.twin.simulation import simulate
    return simulate(trace, job.config, job.profile, horizon_s=job.horizon_s,
                    token_timestamps=job.token_timestamps)


@dataclass
class _ClusterResult:
    records: list
    info: Any
    stats: dict


def _independent_replicas(trace: Trace, job: TwinJob) -> _ClusterResult:
    """Round-robin over replicas that never interact (only used while the multi-replica twin
    is unavailable; equivalent to it for a round-robin router, since the bandwidth share is
    already in the profile)."""
    from twinbench.twin.simulation import simulate

    if job.router not in (None, "round-robin"):
        raise RuntimeError(f"router {job.router!r} needs twinbench.twin.cluster")
    n = len(job.replicas)
    order = np.argsort(trace.arrival_s, kind="stable")
    records, blocks = [], []
    for k, cfg in enumerate(job.replicas):
        sim = simulate(trace, cfg, job.profile, horizon_s=job.horizon_s, rows=order[k::n],
                       replica=k)
        records += sim.records
        blocks.append(sim.info.server_config.get("num_gpu_blocks"))
    return _ClusterResult(records, type("Info", (), {"server_config": {
        "num_gpu_blocks": blocks[0]}})(), {"replicas": n, "router": "round-robin (independent)"})


def run_twin_point(job: TwinJob) -> PointResult:
    from twinbench.reports.metrics import summarize

    t0 = time.perf_counter()
    sim = _simulate(job)
    if job.saturated_window:
        job = replace(job, window=saturation_window(sim.records))
    summary = summarize(sim.records, window=job.window, time_series=False)
    metrics = {k: summary.get(k) for k in KEPT_METRICS}
    starv = summary.starvation
    starving_adapters = list(starv.starving_adapters) if starv is not None else []
    starving = bool(starv is not None and (starv.run_starving or starving_adapters))
    reason = "" if starv is None else (starv.run_reason if starv.run_starving else
                                       (f"{len(starving_adapters)} adapter(s) starving"
                                        if starving_adapters else "none"))
    kv_p99, kv_total = kv_usage_p99(sim, job)
    return PointResult(job.tag, metrics, starving, reason, starving_adapters, kv_p99, kv_total,
                       time.perf_counter() - t0, {"stats": _plain(getattr(sim, "stats", {}))})


def saturation_window(records) -> tuple[float, float] | None:
    """(0, last first token): while requests still wait, the batch is as full as allowed.

    Under a closed-loop saturating load (every request queued at time 0) the tail after the
    last admission drains a shrinking batch; leaving it out measures T(B) at B.
    """
    starts = [r.first_token_s for r in records if r.first_token_s is not None]
    return (0.0, max(starts)) if starts and max(starts) > 0 else None


def kv_usage_p99(sim, job: TwinJob) -> tuple[float | None, int | None]:
    """p99 over time of KV blocks in use: the twin's own samples when it has them."""
    from twinbench.advisor.kv_advice import kv_blocks_in_use

    stats = getattr(sim, "stats", None) or {}
    server = getattr(getattr(sim, "info", None), "server_config", None) or {}
    total = server.get("num_gpu_blocks")
    samples = stats.get("kv_blocks_used") if isinstance(stats, dict) else None
    if samples is not None and len(samples):
        return float(np.percentile(np.asarray(samples, dtype=float), 99)), total
    records = [r for r in sim.records if r.first_token_s is not None and r.end_s is not None]
    if not records:
        return None, total
    lo = min(r.first_token_s for r in records)
    hi = max(r.end_s for r in records)
    if job.window is not None:
        lo, hi = max(lo, job.window[0]), min(hi, job.window[1])
    if hi <= lo:
        return None, total
    block = getattr(job.config, "block_size", 16)
    used = kv_blocks_in_use(records, block, np.linspace(lo, hi, job.kv_samples, endpoint=False))
    p99 = float(np.percentile(used, 99))
    # preempted requests are counted as if they kept their blocks: never above the pool
    return (min(p99, float(total - 1)) if total else p99), total


def _plain(x: Any) -> Any:
    """Keep only JSON-able scalars of the twin's stats (arrays are dropped)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()
                if isinstance(v, (int, float, str, bool, type(None), dict))}
    return x
