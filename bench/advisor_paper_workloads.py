"""Adapters per GPU on llama-3.1-8b-h100 for the seed paper's two workload styles.

Rate classes {1.6, 0.8, 0.4} and {0.1, 0.05, 0.025} req/s, ranks {8, 16, 32} round-robin,
1 h, lengths from the bundled Azure conversation slice; `advise adapters` search on the
twin (grows the adapter count until something starves). Prints the recommendation and
writes the heatmap + JSON per workload.

    python bench/advisor_paper_workloads.py [--out DIR] [--duration S] [--workers N]
"""
from __future__ import annotations

import argparse
import json
import os
import time

from twinbench.advisor.adapter_advisor import advise_adapters
from twinbench.advisor.cmd_advise_adapters import adapters_text
from twinbench.advisor.executor import open_executor
from twinbench.advisor.plots import plot_search_surface
from twinbench.twin.config import ServerConfig
from twinbench.twin.profile import Profile

WORKLOADS = {
    "high-rates": {"rates": [1.6, 0.8, 0.4], "start": 4},
    "low-rates": {"rates": [0.1, 0.05, 0.025], "start": 32},
}


def workload(rates, count, duration):
    return {"name": f"paper-rates-{rates[0]}", "seed": 0, "duration_s": duration,
            "arrival": {"process": "poisson"},
            "adapters": {"count": count, "prefix": "lora-", "ranks": [8, 16, 32],
                         "rates": rates},
            "lengths": {"dist": "empirical", "source": "bundled:azure_conv"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/advisor")
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--coarse-points", type=int, default=5)
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    profile = Profile.load("llama-3.1-8b-h100")
    base = ServerConfig(**{**ServerConfig().to_dict(), **profile.defaults})
    for name, spec in WORKLOADS.items():
        if args.only and name != args.only:
            continue
        raw = workload(spec["rates"], spec["start"], args.duration)
        t0 = time.perf_counter()
        with open_executor("process", args.workers) as ex:
            advice = advise_adapters(workload_raw=raw, base_dir=None, profile=profile,
                                     base_config=base, executor=ex, seed=0,
                                     coarse_points=args.coarse_points, parallel=args.workers)
        wall = time.perf_counter() - t0
        png = os.path.join(args.out, f"adapters-{name}.png")
        plot_search_surface(advice.search.evaluations, advice.best, png,
                            title=f"{name} {spec['rates']} req/s, 1 h, llama-3.1-8b-h100 "
                                  f"({advice.search.runs} twin runs)")
        with open(os.path.join(args.out, f"adapters-{name}.json"), "w") as f:
            json.dump({"workload": raw, "wall_s": wall, **advice.to_dict()}, f, indent=1,
                      default=str)
        print(f"== {name}: rates {spec['rates']} req/s, {args.duration:g} s, wall {wall:.0f} s")
        print(adapters_text(advice, name, profile.name, png, None))
        print(flush=True)


if __name__ == "__main__":
    main()
