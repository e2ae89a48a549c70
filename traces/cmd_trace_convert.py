"""`twinbench trace convert IN OUT`: any supported trace (with the trace flags applied) to a
native .jsonl, .csv or .npz."""
from __future__ import annotations

import argparse
import os

COMMAND = ("trace", "convert")
HELP = "convert a trace (any format, transforms applied) to native .jsonl, .csv or .npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.traces.cli_args import add_trace_arguments

    add_trace_arguments(parser, required=True)
    parser.add_argument("out", metavar="OUT", help="output file: .jsonl, .csv or .npz")
    parser.add_argument("--out-format", default=None,
                        help="native-jsonl, native-csv or native-npz (default: from OUT)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from twinbench.traces.cli_args import trace_from_args
    from twinbench.traces.errors import TwinbenchError
    from twinbench.traces.io import save

    if os.path.exists(args.out) and not args.force:
        raise TwinbenchError("exists; pass --force to overwrite", args.out)
    trace = trace_from_args(args)
    save(trace, args.out, format=args.out_format)
    print(f"wrote {len(trace):,} requests to {args.out}")
    return 0
