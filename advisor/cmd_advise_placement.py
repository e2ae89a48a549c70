"""`twinbench advise placement`: adapters over the fewest GPUs, none starving."""
from __future__ import annotations

import argparse

COMMAND = ("advise", "placement")
HELP = ("pack a workload's adapters on the fewest replicas with no starvation and no "
        "out-of-memory (surrogate-guided greedy, each replica confirmed by the twin), then "
        "simulate the whole deployment")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.advisor.cli_common import add_run_arguments
    from twinbench.twin.config import add_server_arguments

    g = parser.add_argument_group("workload and placement")
    g.add_argument("--workload", required=True, metavar="FILE",
                   help="workload file: every adapter with its rate, rank and lengths")
    g.add_argument("--profile", required=True, help="twin profile of one GPU")
    g.add_argument("--gpus-max", type=int, default=8, metavar="N",
                   help="most replicas (GPUs) allowed (default 8); more needed = exit 1")
    g.add_argument("--surrogate", default=None, metavar="FILE",
                   help="surrogate from `twinbench advise surrogate` to guide the packing "
                        "(without it the twin alone searches each replica's frontier)")
    g.add_argument("--duration", type=float, default=None, metavar="S",
                   help="simulated seconds (default: the workload's duration_s)")
    add_run_arguments(parser)
    add_server_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from twinbench.advisor.cli_common import check_run_arguments, load_profile, write_json
    from twinbench.advisor.cmd_advise_adapters import base_config
    from twinbench.advisor.executor import open_executor, show_progress
    from twinbench.advisor.placement import advise_placement
    from twinbench.traces.errors import TwinbenchError
    from twinbench.traces.workload import load_workload

    check_run_arguments(args)
    if args.gpus_max < 1:
        raise TwinbenchError(f"--gpus-max {args.gpus_max}: must be >= 1")
    wl = load_workload(args.workload)
    if not wl.per_adapter_streams:
        raise TwinbenchError("every adapter needs a rate (per-adapter streams)", args.workload)
    if not (args.duration or wl.duration_s):
        raise TwinbenchError("the workload has no duration_s; pass --duration", args.workload)
    profile = load_profile(args.profile)
    bundle = None
    if args.surrogate:
        from twinbench.advisor.surrogate_data import SurrogateBundle
        bundle = SurrogateBundle.load(args.surrogate)
    with open_executor(args.executor, args.workers) as ex:
        plan = advise_placement(workload_raw=wl.raw, base_dir=wl.base_dir, profile=profile,
                                base_config=base_config(args, profile), executor=ex,
                                bundle=bundle, gpus_max=args.gpus_max, seed=args.seed,
                                duration_s=args.duration, progress=show_progress(args.quiet))
    payload = {"workload": args.workload, "profile": profile.name, **plan.to_dict()}
    path = write_json(args, "placement.json", payload)
    if args.json:
        print(json.dumps(payload, indent=1, default=str))
    else:
        print(placement_text(plan, os.path.basename(args.workload), profile.name, path))
    return 0 if plan.fits and not plan.deployment.get("starving_adapters") else 1


def placement_text(plan, workload: str, profile: str, json_path: str | None) -> str:
    from twinbench.advisor.cli_common import fmt

    n_ad = sum(len(r.adapters) for r in plan.replicas)
    lines = [f"advise placement: {workload} on {profile}: {n_ad} adapters on "
             f"{len(plan.replicas)} replica(s) ({plan.twin_runs} twin runs to confirm)"]
    for k, r in enumerate(plan.replicas):
        shown = ", ".join(r.adapters[:6]) + (f", ... ({len(r.adapters)})"
                                            if len(r.adapters) > 6 else "")
        t = r.twin
        lines.append(f"  replica {k}: --max-loras {r.max_loras} --max-cpu-loras "
                     f"{r.max_cpu_loras} --max-num-seqs {r.max_num_seqs}   adapters: {shown}")
        if t is not None:
            lines.append(f"             twin alone: {fmt(t.metrics.get('output_throughput'), ',.0f')}"
                         f" tok/s, served/offered {fmt(t.metrics.get('served_token_ratio'), '.3f')}"
                         + (f", surrogate predicted {r.predicted_tput:,.0f} tok/s"
                            if r.predicted_tput is not None else ""))
    d = plan.deployment
    if d:
        lines.append(f"deployment ({d['router']}): {fmt(d.get('output_throughput'), ',.0f')} "
                     f"output tok/s, served/offered tokens {fmt(d.get('served_token_ratio'), '.3f')}, "
                     f"p99 TTFT {fmt(d.get('p99_ttft_ms'), ',.0f')} ms, p99 ITL "
                     f"{fmt(d.get('p99_itl_ms'), '.1f')} ms, starving adapters: "
                     f"{len(d.get('starving_adapters') or [])}")
    lines += [f"note: {n}" for n in plan.notes]
    if json_path:
        lines.append(f"details: {json_path}")
    return "\n".join(lines)
