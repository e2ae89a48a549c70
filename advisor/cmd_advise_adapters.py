"""`twinbench advise adapters`: how many adapters one server can take, and its max_loras."""
from __future__ import annotations

import argparse

COMMAND = ("advise", "adapters")
HELP = ("search (served adapters = max_cpu_loras, max_loras) on the twin for the most "
        "throughput without starvation; heatmap and margin")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.advisor.cli_common import add_run_arguments
    from twinbench.twin.config import add_server_arguments

    g = parser.add_argument_group("workload and search")
    g.add_argument("--workload", required=True, metavar="FILE",
                   help="workload file (adapters with rates and ranks, arrival and lengths); "
                        "the first N adapters are served")
    g.add_argument("--profile", required=True, help="twin profile (built-in name or JSON)")
    g.add_argument("--max-adapters", type=int, default=None, metavar="N",
                   help="largest number of served adapters searched (default: the workload's "
                        "count, and for a generator workload doubled until something starves)")
    g.add_argument("--max-slots", type=int, default=None, metavar="L",
                   help="largest max_loras searched (default: min(64, --max-adapters))")
    g.add_argument("--duration", type=float, default=None, metavar="S",
                   help="simulated seconds per point (default: the workload's duration_s)")
    g.add_argument("--coarse-points", type=int, default=7,
                   help="coarse lattice values per axis before refining (default 7)")
    g.add_argument("--surrogate", default=None, metavar="FILE",
                   help="answer from a trained surrogate in milliseconds, then confirm the "
                        "answer (and one more adapter) with the twin")
    add_run_arguments(parser)
    add_server_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import os

    from twinbench.advisor import adapter_advisor as aa
    from twinbench.advisor.cli_common import (check_run_arguments, load_profile, out_path,
                                              parallelism, write_json)
    from twinbench.advisor.executor import open_executor, show_progress
    from twinbench.advisor.plots import plot_search_surface
    from twinbench.traces.errors import TwinbenchError
    from twinbench.traces.workload import load_workload

    check_run_arguments(args)
    for flag in ("max_adapters", "max_slots", "coarse_points"):
        v = getattr(args, flag)
        if v is not None and v < (2 if flag == "coarse_points" else 1):
            raise TwinbenchError(f"--{flag.replace('_', '-')} {v}: too small")
    if args.duration is not None and not args.duration > 0:
        raise TwinbenchError(f"--duration {args.duration:g}: must be > 0")
    wl = load_workload(args.workload)
    if not wl.per_adapter_streams:
        raise TwinbenchError("every adapter needs a rate (per-adapter streams): the advisor "
                             "serves the first N adapters of the workload", args.workload)
    if not (args.duration or wl.duration_s):
        raise TwinbenchError("the workload has no duration_s; pass --duration", args.workload)
    limit = aa.pool_limit(wl.raw)
    if limit is not None and args.max_adapters and args.max_adapters > limit:
        raise TwinbenchError(f"--max-adapters {args.max_adapters}: the workload lists only "
                             f"{limit} adapters (use a generator {{\"count\": ...}} to go beyond)")
    profile = load_profile(args.profile)
    base = base_config(args, profile)
    x_range = (1, args.max_adapters) if args.max_adapters else None
    y_range = (1, args.max_slots) if args.max_slots else None
    progress = show_progress(args.quiet)
    with open_executor(args.executor, args.workers) as ex:
        if args.surrogate:
            from twinbench.advisor.surrogate_advice import advise_with_surrogate
            advice = advise_with_surrogate(args.surrogate, workload_raw=wl.raw,
                                           base_dir=wl.base_dir, profile=profile,
                                           base_config=base, executor=ex, seed=args.seed,
                                           x_range=x_range, y_range=y_range,
                                           duration_s=args.duration, progress=progress)
        else:
            advice = aa.advise_adapters(workload_raw=wl.raw, base_dir=wl.base_dir,
                                        profile=profile, base_config=base, executor=ex,
                                        seed=args.seed, x_range=x_range, y_range=y_range,
                                        duration_s=args.duration,
                                        coarse_points=args.coarse_points,
                                        parallel=parallelism(args), progress=progress)
    plot = out_path(args, "adapters.png")
    name = os.path.basename(args.workload)
    if plot and advice.search.evaluations:
        plot_search_surface(advice.search.evaluations, advice.best, plot,
                            title=f"advise adapters: {name} on {profile.name} "
                                  f"({advice.search.runs} twin runs)")
    payload = {"workload": args.workload, "profile": profile.name, **advice.to_dict()}
    path = write_json(args, "advice.json", payload)
    if args.json:
        import json
        print(json.dumps(payload, indent=1, default=str))
    else:
        print(adapters_text(advice, name, profile.name, plot, path))
    return 0 if advice.best is not None else 1


def base_config(args: argparse.Namespace, profile):
    from twinbench.traces.errors import TwinbenchError
    from twinbench.twin.config import ServerConfig
    for flag in ("max_loras", "max_cpu_loras"):
        if getattr(args, flag, None) is not None:
            raise TwinbenchError(f"--{flag.replace('_', '-')} is what the advisor chooses "
                                 "(advise adapters: bound it with --max-adapters / --max-slots)")
    given = {k: v for k, v in ServerConfig.from_args(args).to_dict().items()
             if getattr(args, k, None) is not None}
    return ServerConfig(**{**ServerConfig().to_dict(), **profile.defaults, **given})


def adapters_text(advice, workload: str, profile: str, plot: str | None,
                  json_path: str | None) -> str:
    from twinbench.advisor.cli_common import fmt

    lines = [f"advise adapters: {workload} on the twin, profile {profile}",
             f"searched served adapters {advice.x_range[0]}..{advice.x_range[1]} x max_loras "
             f"{advice.y_range[0]}..{advice.y_range[1]} with {advice.search.runs} twin runs "
             f"({advice.memory_excluded} excluded before running: LoRA slots leave too little KV)",
             "starvation: served < 90% of offered tokens, or any adapter starving"]
    if advice.best is None:
        lines.append("no configuration serves even one adapter without starvation")
    else:
        n, slots = advice.best
        r = advice.results.get(advice.best)
        lines.append(f"recommended: serve {n} adapters: --max-cpu-loras {n} --max-loras {slots}")
        if r is not None:
            lines.append(f"  output throughput {fmt(r.metrics.get('output_throughput'), ',.0f')} "
                         f"tok/s, served/offered tokens "
                         f"{fmt(r.metrics.get('served_token_ratio'), '.3f')}, p99 TTFT "
                         f"{fmt(r.metrics.get('p99_ttft_ms'), ',.0f')} ms")
        if advice.first_starving_at_best is not None:
            lines.append(f"margin: {advice.margin} more adapter(s) at max_loras {slots}; "
                         f"{advice.first_starving_at_best} adapters starve")
        else:
            lines.append(f"margin: at least {advice.margin} more adapter(s) "
                         "(no starvation seen in the searched range)")
    lines += [f"note: {n}" for n in advice.notes]
    if plot:
        lines.append(f"heatmap: {plot}")
    if json_path:
        lines.append(f"details: {json_path}")
    return "\n".join(lines)
