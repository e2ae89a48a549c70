"""The replay-timing flags every command that runs a trace shares (replay, validate)."""
from __future__ import annotations

import argparse
from typing import Any

from twinbench.backends.base import ReplayOptions
from twinbench.traces.errors import TwinbenchError


def add_run_timing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warmup", type=int, default=0, metavar="N",
                        help="flag the first N requests as warm-up (left out of metrics)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop dispatching requests that arrive after S seconds")
    parser.add_argument("--drain-limit", type=float, default=600.0, metavar="S",
                        help="after the last dispatched arrival wait at most S s (default 600)")


def check_run_timing_arguments(args: argparse.Namespace) -> None:
    """One clear error per bad flag, before any slow work starts."""
    if args.warmup < 0:
        raise TwinbenchError(f"--warmup {args.warmup}: must be >= 0")
    if args.duration is not None and args.duration <= 0:
        raise TwinbenchError(f"--duration {args.duration}: must be > 0")
    if args.drain_limit < 0:
        raise TwinbenchError(f"--drain-limit {args.drain_limit}: must be >= 0")


def options_from_args(args: argparse.Namespace, **more: Any) -> ReplayOptions:
    """`ReplayOptions` from the shared flags."""
    check_run_timing_arguments(args)
    return ReplayOptions(warmup_requests=args.warmup, duration_s=args.duration,
                         drain_limit_s=args.drain_limit, seed=args.seed or 0,
                         quiet=args.quiet, **more)
