"""`twinbench advise surrogate`: train the adapter surrogate on twin runs and score it."""
from __future__ import annotations

import argparse

COMMAND = ("advise", "surrogate")
HELP = ("train the interpretable surrogate (throughput, starvation) on twin runs over "
        "workloads drawn from a pool; report its held-out error and answer time")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.advisor.cli_common import add_run_arguments
    from twinbench.twin.config import add_server_arguments

    g = parser.add_argument_group("training")
    g.add_argument("--workload", required=True, metavar="FILE",
                   help="the adapter pool (rates, ranks, lengths) workloads are drawn from")
    g.add_argument("--profile", required=True, help="twin profile")
    g.add_argument("--runs", type=int, default=240, help="twin runs (default 240)")
    g.add_argument("--pool-size", type=int, default=None, metavar="N",
                   help="adapters drawn from (default: the workload's count)")
    g.add_argument("--duration", type=float, default=600.0, metavar="S",
                   help="simulated seconds per run (default 600)")
    g.add_argument("--holdout", type=float, default=0.25,
                   help="share of drawn workloads held out for scoring (default 0.25)")
    g.add_argument("--kind", choices=["auto", "trees", "linear"], default="auto",
                   help="trees need scikit-learn (extra 'surrogate'); linear is NumPy only")
    add_run_arguments(parser)
    add_server_arguments(parser)


def train_and_score(samples, kind: str, holdout: float, seed: int):
    from twinbench.advisor import surrogate as sg

    train, held = sg.split(samples, holdout, seed)
    if not train or not held:
        from twinbench.traces.errors import TwinbenchError
        raise TwinbenchError("--runs too small to hold workloads out; use at least 8")
    model = sg.fit(train, kind=kind, seed=seed)
    score = sg.score(model, held)
    final = sg.fit(samples, kind=kind, seed=seed)   # the shipped model sees every run
    return final, score, len(train)


def run(args: argparse.Namespace) -> int:
    import json

    from twinbench.advisor.adapter_advisor import pool_limit
    from twinbench.advisor.cli_common import check_run_arguments, load_profile, out_path
    from twinbench.advisor.cmd_advise_adapters import base_config
    from twinbench.advisor.executor import open_executor, show_progress
    from twinbench.advisor.surrogate import sklearn_available
    from twinbench.advisor.surrogate_data import SurrogateBundle, collect, mean_lengths
    from twinbench.traces.errors import TwinbenchError
    from twinbench.traces.workload import load_workload

    check_run_arguments(args)
    if args.runs < 8:
        raise TwinbenchError(f"--runs {args.runs}: at least 8")
    if not 0 < args.holdout < 1:
        raise TwinbenchError(f"--holdout {args.holdout:g}: must be in (0, 1)")
    if args.kind == "trees" and not sklearn_available():
        raise TwinbenchError("--kind trees needs scikit-learn: pip install 'twinbench[surrogate]'")
    if not args.out:
        raise TwinbenchError("--out DIR is needed: the surrogate is saved there")
    wl = load_workload(args.workload)
    if not wl.per_adapter_streams:
        raise TwinbenchError("every adapter needs a rate", args.workload)
    profile = load_profile(args.profile)
    base = base_config(args, profile)
    pool_size = args.pool_size or pool_limit(wl.raw) or len(wl.adapters)
    with open_executor(args.executor, args.workers) as ex:
        samples = collect(raw=wl.raw, base_dir=wl.base_dir, profile=profile, base_config=base,
                          executor=ex, runs=args.runs, pool_size=pool_size,
                          duration_s=args.duration, seed=args.seed,
                          progress=show_progress(args.quiet))
    model, score, n_train = train_and_score(samples, args.kind, args.holdout, args.seed)
    prompt, output = mean_lengths(wl.raw, wl.base_dir, args.seed)
    rank = max(a.rank for a in wl.adapters)
    bundle = SurrogateBundle(model, profile.name, prompt, output, rank, score.to_dict(),
                             model.explain())
    path = out_path(args, "surrogate.pkl")
    bundle.save(path)
    payload = {"workload": args.workload, "profile": profile.name, "kind": model.kind,
               "runs": len(samples), "train_runs": n_train, "held_out": score.to_dict(),
               "starving_share": sum(s.starving for s in samples) / len(samples),
               "explain": model.explain(), "model": path}
    with open(out_path(args, "surrogate.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    if args.json:
        print(json.dumps(payload, indent=1))
    else:
        print(f"surrogate ({model.kind}) trained on {n_train} of {len(samples)} twin runs "
              f"({args.duration:g} s each), scored on {score.n} runs of held-out workloads:\n"
              f"  throughput SMAPE {score.throughput_smape:.1f}%   starvation verdict "
              f"accuracy {100 * score.starvation_accuracy:.1f}%   answer "
              f"{score.answer_ms:.2f} ms for {score.n} predictions\n"
              f"saved: {path} (use: twinbench advise adapters --surrogate {path} ...)")
    return 0
