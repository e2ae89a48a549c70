"""Multi-replica twin: N engines behind a router, co-simulated in arrival order.

Routers (the seed paper's multi-replica deployments):
- `round-robin`: request k goes to replica k mod N;
- `least-outstanding`: the replica with the fewest requests submitted and not yet finished
  (ties: lowest index), judged after every step that started before the arrival;
- `adapter-affinity`: every adapter is pinned to one replica (adapters in catalog order spread
  round-robin, so a replica sees ~1/N of the adapters); base-model requests go least-outstanding.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from twinbench.reports.records import RequestRecord
from twinbench.traces.core import Trace
from twinbench.twin.config import ServerConfig
from twinbench.twin.profile import Profile
from twinbench.twin.simulation import (FOREVER_NS, SimResult, _Collector, _emit_plain, _RowIds,
                                     dispatched_count, engine_for, finish_records, run_info)

ROUTERS = ("round-robin", "least-outstanding", "adapter-affinity")


def simulate_cluster(trace: Trace, configs: list[ServerConfig], profile: Profile | str, *,
                     router: str = "round-robin", mode: str = "coalesced",
                     token_timestamps: str = "exact", horizon_s: float | None = None,
                     warmup_requests: int = 0,
                     emit: Callable[[RequestRecord], None] | None = None,
                     dispatch_until_s: float | None = None,
                     progress: Callable[[float], None] | None = None) -> SimResult:
    """Replay `trace` on len(configs) replicas; records carry `replica`.

    `info.extra["replicas"]` holds each replica's RunInfo dict, `stats["replicas"]` their stats.
    """
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {ROUTERS}")
    if not configs:
        raise ValueError("simulate_cluster needs at least one ServerConfig")
    profile = Profile.load(profile)
    t_wall = time.perf_counter()
    ids = trace.ids.tolist() if trace.ids is not None else _RowIds()
    engines, collectors = [], []
    shared: list[RequestRecord] = []
    for k, cfg in enumerate(configs):
        eng = engine_for(trace, cfg, profile, mode, None)
        col = _Collector(trace, eng, ids, token_timestamps, warmup_requests, k, emit)
        col.records = shared
        engines.append(eng)
        collectors.append(col)

    def finished_hook(col, eng):
        def hook(req, error=None, status=None):
            eng.outstanding -= 1
            col(req, error, status)
        return hook

    for eng, col in zip(engines, collectors):
        eng.on_finish = finished_hook(col, eng)

    order = np.argsort(trace.arrival_s, kind="stable")
    n_disp = dispatched_count(trace.arrival_s[order], dispatch_until_s)
    horizon_ns = FOREVER_NS if horizon_s is None else int(round(horizon_s * 1e9))
    arrival_ns = np.rint(trace.arrival_s[order] * 1e9).astype(np.int64).tolist()
    names = [a.name for a in trace.adapters]
    n = len(engines)
    not_started = []
    for j in range(n_disp):
        i = int(order[j])
        t = arrival_ns[j]
        if t > horizon_ns:
            not_started = [int(x) for x in order[j:n_disp]]
            break
        a = int(trace.adapter_idx[i])
        if router == "round-robin":
            k = j % n
        elif router == "adapter-affinity" and a >= 0:
            k = a % n
        else:
            for eng in engines:
                eng.run(t + eng.model.input_ns - 1)
            k = min(range(n), key=lambda x: (engines[x].outstanding, x))
        eng = engines[k]
        eng.run(t + eng.model.input_ns - 1)
        eng.outstanding += 1
        eng.submit(ids[i], t, int(trace.prompt_tokens[i]), int(trace.output_tokens[i]),
                   names[a] if a >= 0 else None,
                   trace.prefix_blocks(i) if eng.pool.caching else None, key=i)
        if progress is not None and j % 2048 == 0:
            progress(t / 1e9)
    for eng in engines:
        eng.run(horizon_ns)
        for req in eng.leftovers():
            eng.on_finish(req, None, "unfinished")
    for i in not_started:
        _emit_plain(collectors[0], trace, i, "unfinished", "not started by the horizon")
    for j in range(n_disp, len(order)):
        _emit_plain(collectors[0], trace, int(order[j]), "cancelled",
                    "not dispatched (after --duration)")
    finish_records(shared)
    sketches: dict = {}
    per_stats, per_info = [], []
    for k, (eng, col) in enumerate(zip(engines, collectors)):
        for key, fams in col.finish_sketches().items():
            if key in sketches:
                sketches[key]["itl"].merge(fams["itl"])
            else:
                sketches[key] = fams
        st = dict(eng.stats, gpu_loads=eng.caches.gpu_loads, disk_loads=eng.caches.disk_loads,
                  simulated_s=eng.now_ns / 1e9)
        per_stats.append(st)
        per_info.append(run_info(eng, profile, mode, st, replica=k).to_dict())
    totals = {key: sum(s[key] for s in per_stats) for key in
              ("steps", "events", "segments", "preemptions", "admissions")}
    stats = dict(totals, replicas=per_stats, wall_s=time.perf_counter() - t_wall,
                 requests=len(trace), simulated_s=max(s["simulated_s"] for s in per_stats))
    info = run_info(engines[0], profile, mode, stats)
    info.server_config = {"replicas": len(engines), "router": router,
                          "per_replica": [e.config.to_dict() for e in engines]}
    info.extra["replicas"] = per_info
    info.extra["router"] = router
    if progress is not None:
        progress(stats["simulated_s"])
    return SimResult(records=shared if emit is None else [], info=info, stats=stats,
                     sketches=sketches)
