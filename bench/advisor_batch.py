"""`advise batch` on built-in profiles: chosen max_num_seqs, KV savings, replication.

For the three "Mind the Memory Gap" profiles the paper's linear decode model gives a closed-
form answer for the efficiency rule; it is printed beside the twin's sweep answer (the twin
also pays prefill and scheduling, so they differ a little). Writes one plot per profile.

    python bench/advisor_batch.py [--out DIR] [--profiles a,b,...] [--replicas N]
"""
from __future__ import annotations

import argparse
import math
import os
import time

from twinbench.advisor.batch_advisor import advise_batch
from twinbench.advisor.batch_rules import EfficiencyRule, LinearStepModel
from twinbench.advisor.executor import open_executor
from twinbench.advisor.plots import plot_batch_curve
from twinbench.advisor.report import batch_text
from twinbench.twin.config import ServerConfig
from twinbench.twin.profile import Profile

PAPER_LINEAR = {"opt-1.3b-h100": (3.72, 0.0964), "opt-2.7b-h100": (6.46, 0.125),
                "llama-2-7b-h100": (11.35, 0.158)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/advisor")
    ap.add_argument("--profiles", default=None)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--share-sensitivity", default=None, metavar="PROFILE",
                    help="only: replication of PROFILE at bandwidth shares 1, 0.5, 0.25, 0")
    args = ap.parse_args()
    if args.share_sensitivity:
        share_sensitivity(args.share_sensitivity, args.workers)
        return
    os.makedirs(args.out, exist_ok=True)
    names = args.profiles.split(",") if args.profiles else \
        list(PAPER_LINEAR) + [n for n in Profile.builtin_names() if n not in PAPER_LINEAR]
    rule = EfficiencyRule()
    for name in names:
        profile = Profile.load(name)
        base = ServerConfig(**{**ServerConfig().to_dict(), **profile.defaults,
                               "enable_lora": False})
        t0 = time.perf_counter()
        with open_executor("process", args.workers) as ex:
            advice = advise_batch(rule=rule, b_max=512, executor=ex, profile=profile,
                                  base_config=base, replicas_max=args.replicas,
                                  parallel=args.workers)
        wall = time.perf_counter() - t0
        png = os.path.join(args.out, f"batch-{name}.png")
        plot_batch_curve(advice.sweep.curve, advice.sweep.choice.batch, png,
                         title=f"advise batch: twin, {name}", knee=advice.sweep.knee.batch,
                         itl_limit_ms=rule.itl_limit(advice.sweep.curve))
        print(f"== {name} (wall {wall:.0f} s)")
        if name in PAPER_LINEAR:
            a, b = PAPER_LINEAR[name]
            closed = math.floor(LinearStepModel(a, b).efficiency_knee(rule.eps))
            print(f"paper linear model {a} + {b}*B ms: closed-form efficiency knee B={closed}")
        print(batch_text(advice, f"twin, profile {name}", plot=png))
        print(flush=True)


def share_sensitivity(name: str, workers: int) -> None:
    """The replication answer hangs on the assumed bandwidth share: show how much."""
    from twinbench.advisor.batch_advisor import replication_what_if
    profile = Profile.load(name)
    base = ServerConfig(**{**ServerConfig().to_dict(), **profile.defaults, "enable_lora": False})
    with open_executor("process", workers) as ex:
        for share in (1.0, 0.5, 0.25, 0.0):
            p = profile.with_changes(replica_bandwidth_share=share)
            rows = replication_what_if(int(base.max_num_seqs), 2, executor=ex, profile=p,
                                       base_config=base, trace=None, seed=0,
                                       requests_per_slot=8)
            two = rows[1]
            print(f"{name} B={base.max_num_seqs}/replica, share {share:g}: 2 replicas "
                  f"{two.get('output_throughput') or 0:,.0f} tok/s vs one "
                  f"{rows[0].get('output_throughput') or 0:,.0f} "
                  f"({two.get('gain_vs_one_pct', float('nan')):+.1f}%)")


if __name__ == "__main__":
    main()
