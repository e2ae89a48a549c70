"""`twinbench trace inspect [TRACE]`: counts, rates, burstiness, lengths, adapter shares."""
from __future__ import annotations

import argparse
import json

COMMAND = ("trace", "inspect")
HELP = "summarise a trace: count, span, rates, burstiness, token percentiles, adapter shares"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.traces.cli_args import add_trace_arguments

    add_trace_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="write rate-over-time and length histograms to this image")


def fmt(x, spec: str = ",.1f") -> str:
    return "n/a" if x is None else format(x, spec)


def text_report(s: dict) -> str:
    tr = s["trace"]
    lines = [
        f"trace        {tr['source']}  ({tr['format']})",
        f"requests     {s['requests']:,}",
        f"span         {fmt(s['span_s'])} s",
        f"mean rate    {fmt(s['mean_rate_rps'], ',.3f')} req/s",
        f"inter-arrival CV  {fmt(s['interarrival_cv'], '.2f')}",
        f"peak / mean  1 s: {fmt(s['peak_1s_over_mean'], '.1f')}x   "
        f"60 s: {fmt(s['peak_60s_over_mean'], '.2f')}x",
    ]
    for side in ("prompt_tokens", "output_tokens"):
        d = s[side]
        lines.append(f"{side.replace('_', ' '):<15}mean {fmt(d['mean'])}  p50 {fmt(d['p50'], ',.0f')}"
                     f"  p90 {fmt(d['p90'], ',.0f')}  p99 {fmt(d['p99'], ',.0f')}"
                     f"  max {fmt(d['max'], ',')}")
    if s["prefix_blocks"]:
        p = s["prefix_blocks"]
        lines.append(f"prefix blocks {p['mean_per_request']:.1f}/request of {p['block_tokens']} "
                     f"tokens, {100 * p['reuse_fraction']:.1f}% shared")
    if tr["transforms"]:
        lines.append("transforms   " + "; ".join(tr["transforms"]))
    for key, label in (("adapters", "adapter"), ("tenants", "tenant")):
        rows = s[key]
        if not rows:
            continue
        lines.append(f"{label:<24}{'rank':>5}{'requests':>10}{'share':>8}")
        shown = sorted(rows, key=lambda r: -r["requests"])
        for r in shown[:20]:
            none = "(base model)" if key == "adapters" else "(no tenant)"
            name = none if r["name"] is None else r["name"]
            lines.append(f"{name[:24]:<24}{r.get('rank') or '':>5}{r['requests']:>10,}"
                         f"{100 * r['share']:>7.1f}%")
        if len(shown) > 20:
            rest = sum(r["requests"] for r in shown[20:])
            lines.append(f"... {len(shown) - 20} more {key} with {rest:,} requests")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from twinbench.traces.cli_args import trace_from_args
    from twinbench.traces.native_header import json_default
    from twinbench.traces.stats import inspect_stats

    trace = trace_from_args(args)
    stats = inspect_stats(trace)
    if args.plot:
        from twinbench.traces.plot import plot_trace

        plot_trace(trace, args.plot)
    if args.json:
        print(json.dumps(stats, indent=2, default=json_default))
    else:
        print(text_report(stats))
        if args.plot:
            print(f"plot         {args.plot}")
    return 0
