"""The trace arguments every command that takes a trace shares (replay, advisor, validate).

    add_trace_arguments(parser)      # TRACE, --format, --adapters, --rate, --window, ...
    trace = trace_from_args(args)    # load or generate, then transform, in a fixed order

Order of operations: load (or generate a `.workload.json` / `--workload`) → `--window` →
`--time-scale` → `--rate` → `--max-requests` → `--adapters` → `--max-model-len`.
Warnings (e.g. unsorted timestamps that were sorted) are printed as one line each on stderr.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from twinbench.traces.core import Trace
from twinbench.traces.errors import TraceWarning, TwinbenchError


def add_trace_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    g = parser.add_argument_group("trace")
    g.add_argument("trace", metavar="TRACE", nargs=None if required else "?", default=None,
                   help="trace file (Azure/BurstGPT CSV, Mooncake JSONL, length table, ServeGen "
                        "chunk or folder, native .jsonl/.csv/.npz), a .workload.json to "
                        "generate, or bundled:NAME"
                        + ("" if required else "; default: the bundled Azure conversation "
                                               "slice (600 s, 2,867 requests)"))
    g.add_argument("--format", default=None,
                   help="override format detection: azure, burstgpt, mooncake, lengths, "
                        "servegen, workload, native-jsonl, native-csv, native-npz")
    g.add_argument("--workload", metavar="FILE", default=None,
                   help="generate the trace from this workload file instead of reading TRACE")
    g.add_argument("--adapters", metavar="SPEC", default=None,
                   help="assign adapters: zipf:S:N, uniform:N, round-robin:N, tenant[:N], "
                        "weights:W1,W2,...")
    g.add_argument("--adapter-ranks", metavar="R,R,...", default="8,16,32",
                   help="LoRA ranks cycled over assigned adapters (default 8,16,32)")
    g.add_argument("--rate", type=float, default=None, metavar="RPS",
                   help="rescale arrival times to this mean request rate (req/s)")
    g.add_argument("--time-scale", type=float, default=None, metavar="X",
                   help="speed-up factor: 2 replays twice as fast")
    g.add_argument("--window", default=None, metavar="A:B",
                   help="keep requests arriving in [A, B) seconds, A becomes 0 "
                        "(ServeGen: the span sampled, default 0:600)")
    g.add_argument("--max-requests", type=int, default=None, metavar="N",
                   help="keep only the first N requests")
    g.add_argument("--max-model-len", type=int, default=None, metavar="TOKENS",
                   help="clip prompt+output to this many tokens")
    g.add_argument("--seed", type=int, default=None,
                   help="seed for generated arrivals/lengths and adapter assignment "
                        "(default 0, or the workload's seed)")
    g.add_argument("--strict", action="store_true",
                   help="refuse unsorted timestamps and unknown columns instead of warning")


def parse_window(text: str) -> tuple[float, float | None]:
    a, sep, b = text.partition(":")
    try:
        start = float(a) if a else 0.0
        end = float(b) if b else None
    except ValueError:
        raise TwinbenchError(f"--window {text!r}: expected A:B in seconds, e.g. 0:600") \
            from None
    if not sep or (end is not None and not end > start) or start < 0:
        raise TwinbenchError(f"--window {text!r}: expected A:B with 0 <= A < B, e.g. 0:600")
    return start, end


def parse_ranks(text: str) -> list[int]:
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ranks = []
    if not ranks or any(r < 1 for r in ranks):
        raise TwinbenchError(f"--adapter-ranks {text!r}: expected ranks like 8,16,32")
    return ranks


def check_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--rate", args.rate), ("--time-scale", args.time_scale)):
        if value is not None and not value > 0:
            raise TwinbenchError(f"{flag} {value:g}: must be > 0")
    if args.max_requests is not None and args.max_requests < 1:
        raise TwinbenchError(f"--max-requests {args.max_requests}: must be >= 1")
    if args.max_model_len is not None and args.max_model_len < 2:
        raise TwinbenchError(f"--max-model-len {args.max_model_len}: must be >= 2")
    if args.seed is not None and args.seed < 0:
        raise TwinbenchError(f"--seed {args.seed}: must be >= 0")


def trace_from_args(args: argparse.Namespace) -> Trace:
    """Load or generate the trace the flags describe, with every transform applied."""
    from twinbench.traces import transforms as tf
    from twinbench.traces.assign import assign_adapters, parse_adapter_spec
    from twinbench.traces.samples import bundled, resolve
    from twinbench.traces.io import canonical_format, detect_format, load

    check_flags(args)
    fmt = canonical_format(args.format)
    window = parse_window(args.window) if args.window else None
    path = args.workload or args.trace or bundled()
    if args.workload:
        fmt = "workload"
    elif str(path).endswith(".workload.json") and fmt is None:
        fmt = "workload"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceWarning)
        effective = fmt or detect_format(resolve(str(path)))
        # a workload file's own seed applies unless --seed is given
        options: dict = {"seed": args.seed if effective == "workload" else args.seed or 0}
        if effective == "servegen" and window is not None:
            options["window"] = (window[0], window[1] if window[1] is not None
                                 else window[0] + 600.0)
            window = None  # sampled exactly in that span; arrivals already start at A
        trace = load(path, format=effective, strict=args.strict, **options)
    for w in caught:
        if issubclass(w.category, TraceWarning):
            print(f"twinbench: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if window is not None:
        trace = tf.window(trace, window[0], window[1])
        if not len(trace):
            raise TwinbenchError(f"--window {args.window}: no requests arrive in it")
    if args.time_scale is not None:
        trace = tf.time_scale(trace, args.time_scale)
    if args.rate is not None:
        trace = tf.rescale_rate(trace, args.rate)
    if args.max_requests is not None:
        trace = tf.head(trace, args.max_requests)
    if args.adapters:
        scheme, n, weights = parse_adapter_spec(args.adapters)
        trace = assign_adapters(trace, scheme, n, seed=args.seed or 0,
                                ranks=parse_ranks(args.adapter_ranks), weights=weights)
    if args.max_model_len is not None:
        trace = tf.clip_lengths(trace, args.max_model_len)
    return trace
