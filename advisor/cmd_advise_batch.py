"""`twinbench advise batch`: choose max_num_seqs and size the KV cache (arXiv 2503.08311)."""
from __future__ import annotations

import argparse
import sys

COMMAND = ("advise", "batch")
HELP = ("sweep max_num_seqs on the twin (or a real server per point), pick a batch by rule, "
        "size KV from p99 usage, and ask whether replicas on one GPU beat one instance")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.advisor.cli_common import add_run_arguments
    from twinbench.traces.cli_args import add_trace_arguments
    from twinbench.twin.config import add_server_arguments

    src = parser.add_argument_group("what to sweep")
    src.add_argument("--profile", default=None,
                     help="twin profile (built-in name or JSON file); also gives the memory "
                          "facts for the KV flags in --server-cmd mode")
    src.add_argument("--server-cmd", default=None, metavar="TEMPLATE",
                     help="sweep a real server instead: a launch command containing "
                          "{max_num_seqs} (and optionally {port}); started, checked on "
                          "/health and stopped per point")
    rules = parser.add_argument_group("choosing the batch")
    rules.add_argument("--rule", choices=["efficiency", "peak", "slo"], default="efficiency",
                       help="efficiency: largest B with T(B)/(B*T(1)) >= --eps and ITL under "
                            "the limit (the paper's rule, default); peak: smallest B reaching "
                            "--peak-fraction of the peak; slo: best B meeting every --slo")
    rules.add_argument("--eps", type=float, default=0.2, help="efficiency floor (default 0.2)")
    rules.add_argument("--itl-limit-ms", type=float, default=None,
                       help="mean ITL limit (default: 5x the mean ITL at B=32)")
    rules.add_argument("--peak-fraction", type=float, default=0.9,
                       help="share of peak throughput for --rule peak (default 0.9)")
    rules.add_argument("--slo", action="append", default=[], metavar="METRIC=MS",
                       help="percentile SLO for --rule slo, e.g. p99_itl_ms=50 (repeatable)")
    rules.add_argument("--max-batch", type=int, default=512,
                       help="largest max_num_seqs swept (default 512)")
    rules.add_argument("--kv-margin", type=float, default=0.1,
                       help="KV headroom over the p99 blocks in use (default 0.1 = 10%%)")
    rules.add_argument("--replicas", type=int, default=1, metavar="N",
                       help="also simulate 2..N replicas sharing the GPU (1/N memory each)")
    rules.add_argument("--requests-per-slot", type=int, default=8,
                       help="closed-loop load size: requests queued per batch slot (default 8)")
    add_run_arguments(parser, seed=False)
    # Trace flags (TRACE optional: without one the load is closed-loop saturating) and the
    # server flags share --max-model-len with the same meaning, so let the later one win.
    parser.conflict_handler = "resolve"
    add_trace_arguments(parser)
    add_server_arguments(parser)


def build_rule(args: argparse.Namespace):
    from twinbench.advisor.batch_rules import EfficiencyRule, LatencySLORule, PeakFractionRule
    from twinbench.traces.errors import TwinbenchError

    if args.rule == "efficiency":
        if not 0 < args.eps <= 1:
            raise TwinbenchError(f"--eps {args.eps:g}: must be in (0, 1]")
        return EfficiencyRule(eps=args.eps, itl_limit_ms=args.itl_limit_ms)
    if args.rule == "peak":
        if not 0 < args.peak_fraction <= 1:
            raise TwinbenchError(f"--peak-fraction {args.peak_fraction:g}: must be in (0, 1]")
        return PeakFractionRule(args.peak_fraction)
    slos = {}
    for text in args.slo:
        key, sep, value = text.partition("=")
        try:
            slos[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise TwinbenchError(f"--slo {text!r}: expected METRIC=MS, e.g. p99_itl_ms=50")
    if not slos:
        raise TwinbenchError("--rule slo needs at least one --slo METRIC=MS")
    try:
        return LatencySLORule(slos)
    except ValueError as e:
        raise TwinbenchError(f"--slo: {e}") from None


def run(args: argparse.Namespace) -> int:
    from twinbench.advisor import report
    from twinbench.advisor.batch_advisor import advise_batch
    from twinbench.advisor.cli_common import (check_run_arguments, load_profile, out_path,
                                              parallelism, write_json)
    from twinbench.advisor.executor import open_executor, show_progress
    from twinbench.advisor.plots import plot_batch_curve, plot_replication
    from twinbench.traces.cli_args import trace_from_args
    from twinbench.traces.errors import TwinbenchError
    from twinbench.twin.config import ServerConfig

    check_run_arguments(args)
    if not args.profile and not args.server_cmd:
        raise TwinbenchError("give --profile (sweep the twin) or --server-cmd (a real server)")
    if args.max_num_seqs is not None:
        raise TwinbenchError("--max-num-seqs is what advise batch sweeps; bound it with "
                             "--max-batch")
    if args.max_batch < 2:
        raise TwinbenchError(f"--max-batch {args.max_batch}: must be >= 2")
    if args.kv_margin < 0:
        raise TwinbenchError(f"--kv-margin {args.kv_margin:g}: must be >= 0")
    if args.replicas < 1:
        raise TwinbenchError(f"--replicas {args.replicas}: must be >= 1")
    rule = build_rule(args)
    profile = load_profile(args.profile) if args.profile else None
    base = ServerConfig.from_args(args)
    if profile is not None:
        base = ServerConfig(**{**ServerConfig().to_dict(), **profile.defaults,
                               **{k: v for k, v in base.to_dict().items()
                                  if getattr(args, k, None) is not None}})
    trace = trace_from_args(args) if (args.trace or args.workload) else None
    if args.enable_lora is None and (trace is None or not trace.adapters):
        base = base.with_(enable_lora=False)  # no adapters: no LoRA slots eating KV memory
    seed = args.seed or 0
    progress = show_progress(args.quiet)
    run_points = None
    if args.server_cmd:
        run_points = server_runner(args, trace, seed, progress)
    with open_executor(args.executor, args.workers) as ex:
        advice = advise_batch(rule=rule, b_max=args.max_batch, executor=ex, profile=profile,
                              base_config=base, trace=trace, seed=seed,
                              kv_margin=args.kv_margin, requests_per_slot=args.requests_per_slot,
                              replicas_max=args.replicas if not args.server_cmd else 1,
                              progress=progress, parallel=parallelism(args),
                              run_points=run_points)
    where = f"server {args.server_cmd!r}" if args.server_cmd else f"twin, profile {profile.name}"
    plot = out_path(args, "batch.png")
    if plot:
        itl_limit = rule.itl_limit(advice.sweep.curve) if args.rule == "efficiency" else None
        plot_batch_curve(advice.sweep.curve, advice.sweep.choice.batch, plot,
                         title=f"advise batch: {where}", knee=advice.sweep.knee.batch,
                         itl_limit_ms=itl_limit)
    if advice.replication and out_path(args, "replication.png"):
        plot_replication(advice.replication, out_path(args, "replication.png"),
                         title=f"replicas on one GPU: {where}")
    payload = {"source": where, "rule": args.rule, **advice.to_dict()}
    path = write_json(args, "advice.json", payload)
    if args.json:
        import json
        print(json.dumps(payload, indent=1, default=str))
    else:
        print(report.batch_text(advice, where, plot=plot, json_path=path))
    if advice.sweep.choice.batch is None:
        print("twinbench: no batch size satisfies the rule", file=sys.stderr)
        return 1
    return 0


def server_runner(args, trace, seed: int, progress: bool):
    from twinbench.advisor.loads import saturating_trace
    from twinbench.advisor.server_runs import ServerTemplate, run_server_point

    template = ServerTemplate(args.server_cmd)

    def run_points(batches):
        out = []
        for b in batches:  # one server at a time: two would measure each other
            if progress:
                print(f"twinbench: starting the server with max_num_seqs={b}", file=sys.stderr)
            t = trace if trace is not None else saturating_trace(
                b, seed, requests_per_slot=args.requests_per_slot)
            out.append(run_server_point(template, b, t, saturated_window=trace is None,
                                        log_dir=args.out, quiet=not progress))
        return out

    return run_points
