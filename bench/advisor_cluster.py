"""A sweep of >= 200 twin runs: Dask LocalCluster (2 worker processes) vs the local pool.

Each run is one adapter-search point (served adapters, max_loras) of a paper-style workload
on llama-3.1-8b-h100; both executors get the same jobs and must return the same results.

    python bench/advisor_cluster.py [--runs 200] [--duration 120]
"""
from __future__ import annotations

import argparse
import time

from twinbench.advisor.adapter_advisor import WorkloadSlice, point_config
from twinbench.advisor.executor import map_points, open_executor
from twinbench.advisor.twin_runs import TwinJob, run_twin_point
from twinbench.twin.config import ServerConfig
from twinbench.twin.profile import Profile


def jobs(runs: int, duration: float) -> list[TwinJob]:
    raw = {"name": "paper-low", "seed": 0, "duration_s": duration,
           "arrival": {"process": "poisson"},
           "adapters": {"count": 64, "prefix": "lora-", "ranks": [8, 16, 32],
                        "rates": [0.1, 0.05, 0.025]},
           "lengths": {"dist": "empirical", "source": "bundled:azure_conv"}}
    profile = Profile.load("llama-3.1-8b-h100")
    base = ServerConfig(**{**ServerConfig().to_dict(), **profile.defaults})
    points = [(n, s) for n in range(4, 200, 4) for s in (1, 2, 4, 8, 16, 32) if s <= n]
    points = points[:runs]
    return [TwinJob(WorkloadSlice(raw, None, n, 0, duration), point_config(base, n, s, 32),
                    profile, window=(0.0, duration), horizon_s=duration + 60,
                    token_timestamps="sketch", tag=(n, s))
            for n, s in points]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--duration", type=float, default=120.0)
    args = ap.parse_args()
    work = jobs(args.runs, args.duration)
    t0 = time.perf_counter()
    with open_executor("process", 2) as ex:
        local = map_points(run_twin_point, work, ex)
    t_local = time.perf_counter() - t0

    from distributed import LocalCluster
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        t_up = time.perf_counter() - t0
        with open_executor(cluster.scheduler_address.replace("tcp://", "dask://")) as ex:
            t1 = time.perf_counter()
            remote = map_points(run_twin_point, work, ex)
            t_dask = time.perf_counter() - t1
    same = [r.metrics for r in local] == [r.metrics for r in remote]
    cpu = sum(r.wall_s for r in local)
    print(f"{len(work)} twin runs ({args.duration:g} simulated s each, sum of per-run wall "
          f"{cpu:.0f} s)")
    print(f"local process pool, 2 workers: {t_local:.1f} s")
    print(f"Dask LocalCluster, 2 worker processes: {t_dask:.1f} s (+{t_up:.1f} s cluster "
          "start-up)")
    print(f"identical results: {same}")


if __name__ == "__main__":
    main()
