"""Arguments and helpers shared by `twinbench report` and `twinbench compare`."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twinbench.traces.errors import TwinbenchError


def add_summary_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics")
    g.add_argument("--window", metavar="W0:W1",
                   help="measurement window on the run clock, seconds (W1 empty = to the end)")
    g.add_argument("--slo", metavar="ttft:MS,tpot:MS,e2el:MS",
                   help="SLOs for goodput, in ms (as vLLM's --goodput)")
    g.add_argument("--percentiles", default="50,90,95,99", metavar="P,P,...",
                   help="percentiles to report (default 50,90,95,99)")
    g.add_argument("--starvation-threshold", type=float, default=0.9, metavar="R",
                   help="an adapter starves below this served/offered token ratio (0.9)")
    g.add_argument("--alpha", type=float, default=0.01,
                   help="Mann-Kendall significance for starvation trends, Bonferroni-split "
                        "over adapters (0.01)")
    g.add_argument("--drain-limit", type=float, metavar="S",
                   help="horizon = last arrival + S seconds, for 'never started'")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor leave the binary column cache (.NAME.cols) beside "
                        "run files of 32 MiB or more (it makes a second report of a large "
                        "run ~6x faster)")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TwinbenchError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def parse_window(text: str | None) -> tuple[float, float | None] | None:
    if not text:
        return None
    if ":" not in text:
        raise TwinbenchError(f"--window: expected W0:W1 (seconds), got {text!r}")
    a, b = text.split(":", 1)
    try:
        w0 = float(a) if a.strip() else 0.0
        w1 = float(b) if b.strip() else None
    except ValueError:
        raise TwinbenchError(f"--window: expected numbers, got {text!r}") from None
    if w1 is not None and w1 <= w0:
        raise TwinbenchError(f"--window: end {w1:g} must be after start {w0:g}")
    return w0, w1


def parse_slos(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, _, val = part.partition(":")
        key = key.strip()
        if key not in ("ttft", "tpot", "e2el") or not val:
            raise TwinbenchError(f"--slo: expected ttft:MS, tpot:MS or e2el:MS, got {part!r}")
        try:
            out[key] = float(val)
        except ValueError:
            raise TwinbenchError(f"--slo: {part!r} is not a number of ms") from None
    return out


def summary_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    pct = _floats(args.percentiles, "--percentiles")
    if not pct or any(not 0 <= p <= 100 for p in pct):
        raise TwinbenchError("--percentiles: values must be within 0..100")
    if not 0 < args.starvation_threshold <= 1:
        raise TwinbenchError("--starvation-threshold: must be within (0, 1]")
    if not 0 < args.alpha < 1:
        raise TwinbenchError("--alpha: must be within (0, 1)")
    return {"window": parse_window(args.window), "slos": parse_slos(args.slo),
            "percentiles": tuple(pct), "starvation_threshold": args.starvation_threshold,
            "alpha": args.alpha, "drain_limit_s": args.drain_limit}


def summarize_paths(paths: list[str], kwargs: dict[str, Any], quiet: bool = False,
                    cache: bool = True) -> list:
    """Load and summarise each RUN (twinbench run file or vLLM result JSON); `cache`: use the
    column cache of large run files (reports/colcache.py)."""
    from twinbench.reports.load import load_path
    from twinbench.reports.metrics import summarize

    bar = None
    if not quiet and sys.stderr.isatty() and len(paths) > 1:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc="summarising", unit="run", file=sys.stderr)
    out = []
    for p in paths:
        loaded = load_path(p, cache=cache)
        out.append(summarize(loaded, **kwargs))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def check_writable(path: str | None, force: bool, flag: str = "-o") -> None:
    """Refuse early (before any work) to clobber a file or to write into a missing folder."""
    if path is None:
        return
    if os.path.exists(path) and not force:
        raise TwinbenchError(f"{path}: exists; pass --force to overwrite it ({flag})")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise TwinbenchError(f"{path}: directory {parent} does not exist ({flag})")


def write_text(path: str, text: str, force: bool, flag: str = "-o") -> None:
    check_writable(path, force, flag)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def dumps_json(obj: Any) -> str:
    import json

    from twinbench.reports.runfile import json_default as default

    def clean(o: Any) -> Any:  # JSON has no NaN / inf
        if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), indent=2, default=default)
