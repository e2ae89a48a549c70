"""`twinbench replay`: replay a trace on the twin (default) or a real server, then summarise.

    twinbench replay                                  # bundled Azure sample, Zipf adapters, twin
    twinbench replay TRACE --profile llama-3.1-8b-h100 --max-loras 8 -o run.jsonl
    twinbench replay TRACE --backend openai --base-url http://127.0.0.1:8000 -o real.jsonl
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

COMMAND = ("replay",)
HELP = "replay a trace on the twin or a real server and print its summary"
DEFAULT_PROFILE = "llama-3.1-8b-h100"
DEFAULT_ADAPTERS = "zipf:1.0:32"  # used when the bundled sample is replayed as is


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.traces.cli_args import add_trace_arguments
    from twinbench.replay.run_args import add_run_timing_arguments
    from twinbench.twin.config import add_server_arguments

    add_trace_arguments(parser)
    parser.add_argument("--backend", choices=("twin", "openai"), default="twin",
                        help="twin (simulated, default) or openai (a real server)")
    parser.add_argument("--profile", default=None, metavar="NAME|FILE",
                        help=f"twin profile (default {DEFAULT_PROFILE})")
    parser.add_argument("--mode", choices=("coalesced", "step"), default="coalesced",
                        help="twin engine mode: coalesced (fast, default) or step (reference)")
    parser.add_argument("--replicas", type=int, default=1, help="twin replicas (default 1)")
    parser.add_argument("--router", choices=("round-robin", "least-outstanding",
                                             "adapter-affinity"), default="round-robin",
                        help="request router over --replicas (default round-robin)")
    parser.add_argument("-o", "--output", metavar="RUN.jsonl", default=None,
                        help="write the run file here (default: a temporary file)")
    parser.add_argument("--force", action="store_true", help="overwrite the run file")
    parser.add_argument("--label", default=None, help="label stored in the run file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--token-timestamps", choices=("exact", "sketch"), default="exact",
                        help="exact token times (default) or quantile sketches (huge runs)")
    add_run_timing_arguments(parser)
    # parent parser flags of the server: trace args own --max-model-len (clipping); the twin
    # reads the same value, so the trace and the simulated server agree.
    add_server_arguments(parser, skip=("--max-model-len",))
    try:
        from twinbench.backends import openai_cli
    except ImportError:
        return
    openai_cli.add_arguments(parser)


def _check(args: argparse.Namespace) -> None:
    from twinbench.replay.run_args import check_run_timing_arguments
    from twinbench.traces.errors import TwinbenchError

    check_run_timing_arguments(args)
    if args.replicas < 1:
        raise TwinbenchError(f"--replicas {args.replicas}: must be >= 1")
    if args.output and os.path.exists(args.output) and not args.force:
        raise TwinbenchError(f"{args.output}: exists; pass --force to overwrite it (-o)")


def build_backend(args: argparse.Namespace):
    from twinbench.traces.errors import TwinbenchError

    if args.backend == "openai":
        try:
            from twinbench.backends import openai_cli
        except ImportError:
            raise TwinbenchError("--backend openai: the real-server backend is not installed "
                                 "in this build (twinbench.backends.openai_cli missing)") from None
        return openai_cli.build_backend(args)
    from twinbench.backends.twin import TwinBackend
    from twinbench.twin.config import ServerConfig

    config = ServerConfig.from_args(args)
    return TwinBackend(args.profile or DEFAULT_PROFILE, config, mode=args.mode,
                       replicas=args.replicas, router=args.router)


def run(args: argparse.Namespace) -> int:
    from twinbench.replay.run_args import options_from_args
    from twinbench.replay.run import replay_to_file
    from twinbench.traces.cli_args import trace_from_args

    _check(args)
    if args.trace is None and args.workload is None and args.adapters is None:
        # the demo: bundled sample, Zipf adapters (ranks 8/16/32), a server that can load them
        args.adapters = DEFAULT_ADAPTERS
        if args.max_loras is None:
            args.max_loras = 8
        if args.max_lora_rank is None:
            args.max_lora_rank = 32
        if not args.quiet:
            print(f"twinbench: replaying the bundled Azure sample with --adapters "
                  f"{DEFAULT_ADAPTERS} on {args.profile or DEFAULT_PROFILE} "
                  f"(--max-loras {args.max_loras} --max-lora-rank {args.max_lora_rank})",
                  file=sys.stderr)
    trace = trace_from_args(args)
    backend = build_backend(args)
    options = options_from_args(args, token_timestamps=args.token_timestamps,
                                max_concurrency=getattr(args, "max_concurrency", None))
    out = args.output
    tmp = None
    if out is None:
        fd, tmp = tempfile.mkstemp(prefix="twinbench-run-", suffix=".jsonl")
        os.close(fd)
        out = tmp
    try:
        info, status, sink = replay_to_file(trace, backend, options, out,
                                            force=args.force or tmp is not None,
                                            label=args.label)
        _print_summary(out, args, info, cache=tmp is None)
    finally:
        if tmp is not None:
            os.unlink(tmp)
    if args.output and not args.quiet:
        print(f"twinbench: wrote {args.output} ({status})", file=sys.stderr)
    return 0 if status == "complete" else 130


def _print_summary(path: str, args: argparse.Namespace, info, cache: bool) -> None:
    """`cache`: leave the column cache beside a large run file (not beside a temporary one)."""
    try:
        from twinbench.reports.load import load_path
        from twinbench.reports.metrics import summarize
        from twinbench.reports.render_text import adapter_table, terminal_table
    except ImportError:  # reports not available: a minimal summary from the records
        from twinbench.reports.runfile import read_run

        run = read_run(path)
        ok = [r for r in run.records if r.status == "ok"]
        print(f"requests: {len(run.records)}, ok: {len(ok)}")
        return
    summary = summarize(load_path(path, cache=cache), drain_limit_s=args.drain_limit)
    print(terminal_table([summary]))
    table = adapter_table(summary)
    if table:
        print(f"\nPer adapter:\n{table}")
    if info is not None and info.extra.get("stats"):
        st = info.extra["stats"]
        print(f"\ntwin: {st.get('requests')} requests, {st.get('steps')} steps, "
              f"{st.get('preemptions')} preemptions, simulated {st.get('simulated_s', 0):.1f} s "
              f"in {st.get('wall_s', 0):.2f} s wall", file=sys.stderr)
