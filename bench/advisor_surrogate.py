"""Surrogate accuracy on held-out twin runs and its answer time.

Twin runs over workloads drawn from the paper's low-rate pool (random subsets of up to 160
adapters, rates scaled 0.5-2x, random max_loras) on llama-3.1-8b-h100; both model kinds are
trained on the same runs and scored on whole held-out workloads.

    python bench/advisor_surrogate.py [--runs 240] [--duration 600]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from twinbench.advisor import surrogate as sg
from twinbench.advisor.executor import open_executor
from twinbench.advisor.surrogate_data import collect
from twinbench.twin.config import ServerConfig
from twinbench.twin.profile import Profile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=240)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--pool", type=int, default=160)
    args = ap.parse_args()
    raw = {"name": "paper-low", "seed": 0, "duration_s": args.duration,
           "arrival": {"process": "poisson"},
           "adapters": {"count": args.pool, "prefix": "lora-", "ranks": [8, 16, 32],
                        "rates": [0.1, 0.05, 0.025]},
           "lengths": {"dist": "empirical", "source": "bundled:azure_conv"}}
    profile = Profile.load("llama-3.1-8b-h100")
    base = ServerConfig(**{**ServerConfig().to_dict(), **profile.defaults})
    t0 = time.perf_counter()
    with open_executor("process", 2) as ex:
        samples = collect(raw=raw, base_dir=None, profile=profile, base_config=base,
                          executor=ex, runs=args.runs, pool_size=args.pool,
                          duration_s=args.duration, seed=0)
    print(f"{len(samples)} twin runs in {time.perf_counter() - t0:.0f} s; starving share "
          f"{np.mean([s.starving for s in samples]):.2f}")
    train, held = sg.split(samples, 0.25, seed=0)
    kinds = ["linear"] + (["trees"] if sg.sklearn_available() else [])
    for kind in kinds:
        model = sg.fit(train, kind=kind)
        score = sg.score(model, held)
        x = held[0].x
        t1 = time.perf_counter()
        for _ in range(200):
            model.predict(x)
        one_ms = 1000 * (time.perf_counter() - t1) / 200
        print(f"{kind:6s}: held-out ({score.n} runs of {len({s.meta['workload'] for s in held})} "
              f"unseen workloads): throughput SMAPE {score.throughput_smape:.1f}%, "
              f"starvation accuracy {100 * score.starvation_accuracy:.1f}%, "
              f"one answer {one_ms:.2f} ms, {score.n} answers {score.answer_ms:.2f} ms")
        top = sorted(model.explain()["log_throughput"].items(), key=lambda kv: -abs(kv[1]))[:4]
        print("        main throughput terms:", ", ".join(f"{k} {v:+.3f}" for k, v in top))


if __name__ == "__main__":
    main()
