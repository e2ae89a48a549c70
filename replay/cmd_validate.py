"""`twinbench validate TRACE --base-url URL --profile P`: how close is the twin to the server?

Replays TRACE on the real server `--repeat` times (its noise floor), then on the twin with the
same server config (profile defaults < the server's static facts read before the runs < your
flags), then on the naive baseline; prints SMAPE per metric (real vs real, twin vs real,
baseline vs real), per adapter and the starvation verdicts side by side, and writes run files,
validation.json and validation.html into `-o DIR`. `--fail-above` makes it a check (exit 1).
"""
from __future__ import annotations

import argparse
import os
import sys

COMMAND = ("validate",)
HELP = "replay a trace on a real server (repeated), the twin and a naive baseline; SMAPE report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.backends import openai_cli
    from twinbench.traces.cli_args import add_trace_arguments
    from twinbench.replay.run_args import add_run_timing_arguments
    from twinbench.twin.config import add_server_arguments

    add_trace_arguments(parser, required=True)
    parser.add_argument("--profile", required=True, metavar="NAME|FILE",
                        help="the twin's profile (e.g. from twinbench calibrate)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="real runs (noise floor; default 3)")
    parser.add_argument("--twin-seeds", type=int, metavar="N",
                        help="twin runs to average, each with another speed-variation seed "
                             "(default 5 when the profile has step_jitter, else 1)")
    parser.add_argument("-o", "--output", default="validation", metavar="DIR",
                        help="folder for run files and the report (default ./validation)")
    parser.add_argument("--force", action="store_true", help="overwrite files in DIR")
    parser.add_argument("--fail-above", metavar="SPEC",
                        help="exit 1 when twin-vs-real SMAPE crosses a bound beyond the real "
                             "noise, e.g. output_throughput:3,median_itl_ms:5,starvation; "
                             "'targets' = the issue's targets")
    parser.add_argument("--measure-window", metavar="W0:W1",
                        help="metrics window on the run clock (default 0:last arrival, so "
                             "served/offered counts what was served while the trace ran)")
    parser.add_argument("--starvation-threshold", type=float, default=0.9, metavar="R",
                        help="served/offered token ratio below which an adapter starves (0.9)")
    parser.add_argument("--alpha", type=float, default=0.01,
                        help="Mann-Kendall significance for starvation trends (0.01)")
    add_run_timing_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the fidelity table as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_server_arguments(parser, skip=("--max-model-len",))
    openai_cli.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from twinbench.backends import openai_cli
    from twinbench.replay.run_args import options_from_args
    from twinbench.reports.cli_common import dumps_json, parse_window
    from twinbench.replay import validate as val
    from twinbench.replay import validate_run as vr
    from twinbench.traces.cli_args import trace_from_args
    from twinbench.traces.errors import CheckFailed, TwinbenchError
    from twinbench.twin.config import ServerConfig
    from twinbench.twin.profile import Profile

    if args.repeat < 1:
        raise TwinbenchError(f"--repeat {args.repeat}: must be >= 1")
    if not 0 < args.starvation_threshold <= 1:
        raise TwinbenchError("--starvation-threshold: must be within (0, 1]")
    bounds = val.parse_bounds(args.fail_above)
    outdir = args.output
    if os.path.isdir(outdir) and os.listdir(outdir) and not args.force:
        raise TwinbenchError(f"{outdir}: exists and is not empty; pass --force to overwrite (-o)")
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise TwinbenchError(f"{outdir}: not a directory (-o)")
    profile = Profile.load(args.profile)
    twin_seeds = vr.twin_seeds_default(profile) if args.twin_seeds is None else args.twin_seeds
    if twin_seeds < 1:
        raise TwinbenchError(f"--twin-seeds {args.twin_seeds}: must be >= 1")
    if twin_seeds > 1 and vr.twin_seeds_default(profile) == 1:
        raise TwinbenchError(f"--twin-seeds {twin_seeds}: profile {profile.name} has no speed "
                             "variation (step_jitter), so every twin run is the same")
    trace = trace_from_args(args)
    if not len(trace):
        raise TwinbenchError("the trace has no requests")
    backend = openai_cli.build_backend(args)
    facts = vr.read_static_facts(backend)
    given = {k: v for k, v in vars(args).items() if k in ServerConfig.__dataclass_fields__
             and v is not None}
    config = vr.twin_config(profile, facts, given)
    options = options_from_args(args, max_concurrency=args.max_concurrency)
    window = parse_window(args.measure_window) if args.measure_window else \
        (0.0, float(trace.arrival_s.max()) + 1e-6)
    if not args.quiet:
        print(f"twinbench: twin config: {_config_text(config)}", file=sys.stderr)
    run_ = vr.run_all(trace, backend, profile, config, facts, options, outdir, args.repeat,
                      force=True, quiet=args.quiet, twin_seeds=twin_seeds)
    real, twin, base = vr.summarize_all(run_, window, args.drain_limit,
                                        args.starvation_threshold, args.alpha)
    fid = val.fidelity(real, twin, base)
    if twin_seeds > 1:
        fid.notes.append(f"twin: mean of {twin_seeds} runs with different speed-variation "
                         "seeds (the profile's step_jitter; --twin-seeds)")
    failures = val.check_bounds(fid, bounds)
    # the same bounds applied to each real run in the twin's place: are they attainable?
    real_failures = [val.check_bounds(f, bounds) for f in val.real_as_twin(real, base)]
    if bounds and real_failures:
        fid.notes.append("bounds crossed by each real run in the twin's place, against the "
                         "other runs: " + ", ".join(str(len(x)) for x in real_failures))
    json_path, html_path = vr.write_reports(
        outdir, run_, real, twin, base, fid, failures,
        extra={"bounds": bounds, "window_s": list(window),
               "bounds_crossed_by_real_runs": real_failures})
    print(dumps_json(fid.to_dict()) if args.json else val.text_table(fid))
    if not args.quiet:
        print(f"twinbench: wrote {json_path} and {html_path}", file=sys.stderr)
    if run_.status != "complete":
        return 130
    if failures:
        raise CheckFailed("fidelity bound crossed: " + "; ".join(failures))
    return 0


def _config_text(c) -> str:
    return (f"max_num_seqs {c.max_num_seqs}, max_num_batched_tokens {c.max_num_batched_tokens}, "
            f"num_gpu_blocks {c.num_gpu_blocks}, block_size {c.block_size}, max_loras "
            f"{c.max_loras}, max_cpu_loras {c.max_cpu_loras}, max_model_len {c.max_model_len}")
