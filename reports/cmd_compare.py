"""`twinbench compare BASE NEW [MORE...]`: side by side with SMAPE, per adapter, starvation
agreement, and an optional regression gate (`--fail-on`, exit 1 when a bound is crossed
beyond noise). `--noise-floor` reads all RUNs as repeats of one configuration instead.
"""
from __future__ import annotations

import argparse

from twinbench.reports.cli_common import add_summary_arguments

COMMAND = ("compare",)
HELP = "compare runs (SMAPE per metric and adapter); regression gate with --fail-on"

KEY_METRICS = ("completed", "failed", "duration", "request_throughput", "output_throughput",
               "total_token_throughput", "request_goodput", "max_output_tokens_per_s",
               "max_concurrent_requests", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
               "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms", "mean_e2el_ms",
               "p99_e2el_ms", "mean_ttft_from_arrival_ms", "mean_dispatch_lag_ms",
               "served_token_ratio")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="BASE then the runs to compare with it (run files or vLLM results)")
    p.add_argument("--fail-on", metavar="SPEC",
                   help='regression bounds, e.g. "p99_ttft_ms:+10%%,output_throughput:-5%%"; '
                        "exit 1 when NEW crosses one beyond noise")
    p.add_argument("--noise", nargs="+", metavar="RUN",
                   help="extra repeated runs of BASE's configuration: a change within their "
                        "spread is not a regression")
    p.add_argument("--noise-floor", action="store_true",
                   help="treat all RUNs as repeats of one configuration; report their spread")
    p.add_argument("--all", action="store_true", help="show every metric, not the key ones")
    p.add_argument("--gate-alpha", type=float, default=0.05,
                   help="confidence level 1-α of the bootstrap interval and rank test (0.05)")
    p.add_argument("--reps", type=int, default=1000, help="bootstrap replicates (1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("-o", "--output", metavar="HTML", help="write a self-contained HTML report")
    p.add_argument("--force", action="store_true", help="overwrite the output file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_summary_arguments(p)


def run(args: argparse.Namespace) -> int:
    from twinbench.reports.cli_common import (check_writable, dumps_json, summarize_paths,
                                              summary_kwargs, write_text)
    from twinbench.reports.compare import compare, noise_floor
    from twinbench.reports.regression import parse_fail_on, regression_gate
    from twinbench.traces.errors import TwinbenchError

    if len(args.runs) < 2:
        raise TwinbenchError("compare: give at least two runs (BASE NEW)")
    if not 0 < args.gate_alpha < 1:
        raise TwinbenchError("--gate-alpha: must be within (0, 1)")
    if args.reps < 50:
        raise TwinbenchError("--reps: use at least 50 bootstrap replicates")
    check_writable(args.output, args.force)
    from twinbench.reports.memtune import reuse_freed_memory
    reuse_freed_memory()  # big runs: reuse freed arrays instead of page-faulting anew
    bounds = parse_fail_on(args.fail_on) if args.fail_on else None
    kwargs = summary_kwargs(args)
    summaries = summarize_paths(args.runs, kwargs, quiet=args.quiet,
                                cache=not args.no_cache)
    if args.noise_floor:
        nf = noise_floor(summaries)
        print(dumps_json(nf.to_dict()) if args.json else _noise_text(nf, args.markdown))
        return 0
    noise = None
    if args.noise:
        noise = noise_floor([summaries[0]] + summarize_paths(args.noise, kwargs, args.quiet,
                                                             not args.no_cache))
    comp = compare(*summaries)
    gate = None
    if bounds:
        if len(summaries) != 2:
            raise TwinbenchError("--fail-on: compare exactly two runs, BASE and NEW")
        known = set(summaries[0].metrics) | set(summaries[1].metrics)
        for b in bounds:
            if b.metric not in known:
                raise TwinbenchError(f"--fail-on: unknown metric {b.metric!r}")
        gate = regression_gate(summaries[0], summaries[1], bounds, alpha=args.gate_alpha,
                               reps=args.reps, seed=args.seed, noise=noise)
    if args.json:
        doc = comp.to_dict()
        if gate is not None:
            doc["gate"] = {"failed": any(g.failed for g in gate),
                           "results": [g.to_dict() for g in gate]}
        if noise is not None:
            doc["noise_floor"] = noise.to_dict()
        print(dumps_json(doc))
    else:
        print(_text(comp, gate, args.markdown, args.all))
    if args.output:
        from twinbench.reports.html import render_html
        write_text(args.output, render_html(comp.summaries, comp, gate,
                                            title="twinbench comparison"), args.force)
    return 1 if gate and any(g.failed for g in gate) else 0


def _text(comp, gate, markdown: bool, show_all: bool) -> str:
    from twinbench.reports.compare import SMAPE_DEFINITION, SMAPE_PAPER_DEFINITION
    from twinbench.reports.render_text import (adapter_smape_table, comparison_table, fmt,
                                               starvation_table, _grid)

    keys = None if show_all else KEY_METRICS
    out = [comparison_table(comp, markdown, keys), "",
           f"{SMAPE_DEFINITION}; SMAPE/2: {SMAPE_PAPER_DEFINITION}"]
    smape_keys = ["mean_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "output_throughput"]
    table = adapter_smape_table(comp, smape_keys, markdown)
    if table:
        out += ["", f"Per-adapter SMAPE % ({comp.labels[1]} vs {comp.labels[0]}):", table]
    table = starvation_table(comp, markdown)
    if table:
        out += ["", "Starvation agreement:", table]
    out += [f"note: {n}" for n in comp.notes]
    if gate:
        rows = [[g.bound.text, fmt(g.base, 3), fmt(g.new, 3),
                 "n/a" if g.change_pct is None else f"{g.change_pct:+.2f}",
                 "n/a" if g.ci_pct is None else f"[{g.ci_pct[0]:+.1f}, {g.ci_pct[1]:+.1f}]",
                 fmt(g.rank_p, 4), g.verdict] for g in gate]
        out += ["", "Regression gate:", _grid(["bound", "base", "new", "change %",
                                               "CI of change %", "rank p", "verdict"],
                                              rows, markdown)]
        failed = [g.bound.text for g in gate if g.failed]
        out.append(f"RESULT: FAIL ({', '.join(failed)})" if failed else "RESULT: pass")
    return "\n".join(out)


def _noise_text(nf, markdown: bool) -> str:
    from twinbench.reports.render_text import _grid, fmt

    rows = [[k, fmt(v["mean"], 3), fmt(v["std"], 3), fmt(v["cv_pct"], 2),
             fmt(v["range_pct"], 2), fmt(v["max_pair_smape_pct"], 2)]
            for k, v in nf.metrics.items()]
    head = ["metric", "mean", "std", "CV %", "range %", "max pair SMAPE %"]
    return f"Noise floor over {len(nf.labels)} repeated runs ({', '.join(nf.labels)}):\n" + \
        _grid(head, rows, markdown)
