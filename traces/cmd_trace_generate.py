"""`twinbench trace generate`: a synthetic trace from a workload file or from flags."""
from __future__ import annotations

import argparse
import json
import os

COMMAND = ("trace", "generate")
HELP = "generate a synthetic trace (workload file or flags) into a native .jsonl/.csv/.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", metavar="FILE", default=None,
                        help="workload JSON (docs/workload.md); the flags below build one "
                             "when it is not given")
    parser.add_argument("-o", "--out", required=True, help="output .jsonl, .csv or .npz")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: the workload's seed, else 0)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    g = parser.add_argument_group("workload flags (ignored with --workload)")
    g.add_argument("--process", default="poisson", choices=("poisson", "gamma", "constant"),
                   help="arrival process (default poisson)")
    g.add_argument("--rate", type=float, default=None, metavar="RPS",
                   help="total request rate of a shared stream (req/s)")
    g.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape as vLLM --burstiness: 1 Poisson, <1 burstier")
    g.add_argument("--duration", type=float, default=None, metavar="S", help="seconds to fill")
    g.add_argument("--requests", type=int, default=None, metavar="N", help="number of requests")
    g.add_argument("--adapters", metavar="SPEC", default=None,
                   help="shares of one stream: zipf:S:N, uniform:N or weights:W1,W2,...")
    g.add_argument("--num-adapters", type=int, default=None, metavar="N",
                   help="with --adapter-rates: N adapters, each its own stream")
    g.add_argument("--adapter-rates", metavar="R,R,...", default=None,
                   help="per-adapter stream rates assigned round-robin, e.g. 1.6,0.8,0.4")
    g.add_argument("--adapter-ranks", metavar="R,R,...", default="8,16,32",
                   help="ranks assigned round-robin (default 8,16,32)")
    g.add_argument("--prompt-len", default=None, metavar="DIST",
                   help="N, uniform:MIN:MAX, lognormal:MEAN:SIGMA or empirical:FILE")
    g.add_argument("--output-len", default=None, metavar="DIST", help="as --prompt-len")
    g.add_argument("--print-workload", action="store_true",
                   help="also print the workload JSON the flags describe")


def numbers(text: str, flag: str) -> list[float]:
    from twinbench.traces.errors import TwinbenchError

    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(not x > 0 for x in out):
        raise TwinbenchError(f"{flag} {text!r}: expected positive numbers like 1.6,0.8,0.4")
    return out


def workload_from_flags(args: argparse.Namespace) -> dict:
    from twinbench.traces.assign import parse_adapter_spec, zipf_weights
    from twinbench.traces.errors import TwinbenchError
    from twinbench.traces.lengths import parse_length_flag

    if args.duration is None and args.requests is None:
        raise TwinbenchError("give --duration or --requests (or --workload FILE)")
    arrival: dict = {"process": args.process}
    if args.process == "gamma":
        arrival["burstiness"] = args.burstiness
    ranks = [int(r) for r in numbers(args.adapter_ranks, "--adapter-ranks")]
    wl: dict = {"arrival": arrival}
    if args.duration is not None:
        wl["duration_s"] = args.duration
    if args.requests is not None:
        wl["requests"] = args.requests
    if args.adapter_rates:
        if args.adapters:
            raise TwinbenchError("--adapters (shares) and --adapter-rates (streams) exclude "
                                 "each other")
        rates = numbers(args.adapter_rates, "--adapter-rates")
        count = args.num_adapters or len(rates)
        wl["adapters"] = {"count": count, "ranks": ranks, "rates": rates}
    else:
        if args.rate is None:
            raise TwinbenchError("--rate is needed for a shared stream (or use "
                                 "--adapter-rates)")
        arrival["rate"] = args.rate
        if args.adapters:
            scheme, n, weights = parse_adapter_spec(args.adapters)
            if scheme.startswith("zipf"):
                shares = zipf_weights(n, float(scheme.split(":")[1])).tolist()
            elif scheme == "weights":
                shares = weights
            elif scheme == "uniform":
                shares = [1.0 / n] * n
            else:
                raise TwinbenchError(f"--adapters {args.adapters!r}: generate takes zipf:S:N, "
                                     "uniform:N or weights:...")
            wl["adapters"] = [{"name": f"lora-{k}", "rank": ranks[k % len(ranks)], "share": s}
                              for k, s in enumerate(shares)]
    if args.prompt_len is None and args.output_len is None:
        wl["lengths"] = {"dist": "empirical", "source": "bundled:azure_conv"}
    else:
        if args.prompt_len is None or args.output_len is None:
            raise TwinbenchError("give both --prompt-len and --output-len (or neither: "
                                 "lengths then come from the bundled Azure sample)")
        wl["lengths"] = {"prompt": parse_length_flag(args.prompt_len, "--prompt-len"),
                         "output": parse_length_flag(args.output_len, "--output-len")}
    return wl


def run(args: argparse.Namespace) -> int:
    from twinbench.traces.errors import TwinbenchError
    from twinbench.traces.io import save
    from twinbench.traces.workload import generate, generate_from_file, parse_workload

    if os.path.exists(args.out) and not args.force:
        raise TwinbenchError("exists; pass --force to overwrite", args.out)
    if args.workload:
        trace = generate_from_file(args.workload, seed=args.seed)
    else:
        raw = workload_from_flags(args)
        if args.print_workload:
            print(json.dumps(raw, indent=2))
        trace = generate(parse_workload(raw, base_dir=os.getcwd()), seed=args.seed)
    save(trace, args.out)
    rate = (len(trace) - 1) / trace.duration_s if len(trace) > 1 and trace.duration_s else 0
    print(f"wrote {len(trace):,} requests over {trace.duration_s:,.1f} s ({rate:.2f} req/s, "
          f"{len(trace.adapters)} adapters, seed {trace.meta['seed']}) to {args.out}")
    return 0
