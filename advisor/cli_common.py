"""Arguments every `twinbench advise ...` command shares, and writing its outputs."""
from __future__ import annotations

import argparse
import json
import os

from twinbench.traces.errors import TwinbenchError


def add_run_arguments(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    g = parser.add_argument_group("sweep")
    g.add_argument("--executor", default=None, metavar="SPEC",
                   help="where sweep points run: process (default, local pool), serial, "
                        "threads, or dask://HOST:PORT (a Dask scheduler; extra 'cluster')")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local pool size (default: the CPUs available)")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="write advice.json and the figures here")
    g.add_argument("--json", action="store_true", help="print the advice as JSON")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    if seed:
        g.add_argument("--seed", type=int, default=0, help="seed of generated loads (default 0)")


def check_run_arguments(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        raise TwinbenchError(f"--workers {args.workers}: must be >= 1")
    if args.out:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise TwinbenchError(f"--out {args.out}: exists and is not a directory")
        os.makedirs(args.out, exist_ok=True)


def parallelism(args: argparse.Namespace) -> int:
    from twinbench.advisor.executor import default_workers
    spec = (args.executor or "process")
    if spec == "serial":
        return 1
    return args.workers or (4 if spec.startswith(("dask://", "tcp://")) else default_workers())


def out_path(args: argparse.Namespace, name: str) -> str | None:
    return os.path.join(args.out, name) if args.out else None


def write_json(args: argparse.Namespace, name: str, payload: dict) -> str | None:
    path = out_path(args, name)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1, default=_jsonable)
    return path


def _jsonable(x):
    try:
        import numpy as np
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


def load_profile(name: str):
    from twinbench.twin.profile import Profile
    return Profile.load(name)


def fmt(x, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)
