"""Token-length models: fixed, uniform, lognormal, discrete, empirical (from a trace or table).

A length spec is either joint — `{"dist": "empirical", "source": FILE}` samples (prompt,
output) pairs together, keeping their correlation — or per side:
`{"prompt": DIST, "output": DIST}` where DIST is one of

    128                                   fixed
    {"dist": "fixed", "value": 128}
    {"dist": "uniform", "min": 10, "max": 100}           inclusive integers
    {"dist": "lognormal", "mean": 1000, "sigma": 0.6}     or "median" instead of "mean";
                                                          optional "min"/"max" clip
    {"dist": "discrete", "values": [..], "weights": [..]}
    {"dist": "empirical", "source": FILE}                 that side's column of FILE

Every length is an integer >= 1.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from twinbench.traces.arrivals import nonnegative, number, positive
from twinbench.traces.core import Trace, TraceError

DISTS = ("fixed", "uniform", "lognormal", "discrete", "empirical")

# loads a trace named by an empirical spec; given by the caller so that results can be cached
SourceLoader = Callable[[str, "str | None"], Trace]


def default_source_loader(base_dir: str | None) -> SourceLoader:
    cache: dict[tuple, Trace] = {}

    def load_source(source: str, fmt: str | None) -> Trace:
        from twinbench.traces.samples import resolve
        from twinbench.traces.io import load

        path = resolve(source, base_dir)
        key = (path, fmt)
        if key not in cache:
            cache[key] = load(path, format=fmt)
        return cache[key]

    return load_source


def is_joint(spec) -> bool:
    return isinstance(spec, dict) and spec.get("dist") == "empirical" and "prompt" not in spec


def sample_lengths(spec, rng: np.random.Generator, n: int, load_source: SourceLoader,
                   where: str = "lengths") -> tuple[np.ndarray, np.ndarray]:
    """(prompt_tokens, output_tokens) int32 arrays of length n."""
    if not isinstance(spec, dict):
        raise TraceError(f"{where}: expected an object with 'prompt' and 'output', or an "
                         "empirical source")
    if is_joint(spec):
        src = empirical_source(spec, load_source, where)
        pick = rng.integers(0, len(src), n)
        return src.prompt_tokens[pick].copy(), src.output_tokens[pick].copy()
    for side in ("prompt", "output"):
        if side not in spec:
            raise TraceError(f"{where}.{side}: missing length distribution")
    unknown = set(spec) - {"prompt", "output"}
    if unknown:
        raise TraceError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    prompt = sample_side(spec["prompt"], rng, n, load_source, "prompt", f"{where}.prompt")
    output = sample_side(spec["output"], rng, n, load_source, "output", f"{where}.output")
    return prompt, output


def empirical_source(spec: dict, load_source: SourceLoader, where: str) -> Trace:
    source = spec.get("source")
    if not isinstance(source, str) or not source:
        raise TraceError(f"{where}.source: expected a trace file or bundled:NAME")
    trace = load_source(source, spec.get("format"))
    if not len(trace):
        raise TraceError(f"{where}.source: {source} holds no requests")
    return trace


def sample_side(spec, rng: np.random.Generator, n: int, load_source: SourceLoader, side: str,
                where: str) -> np.ndarray:
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = {"dist": "fixed", "value": spec}
    if not isinstance(spec, dict):
        raise TraceError(f"{where}: expected a number or a distribution object")
    dist = spec.get("dist")
    if dist == "fixed":
        v = positive(spec.get("value"), f"{where}.value")
        out = np.full(n, round(v), dtype=np.int64)
    elif dist == "uniform":
        lo = positive(spec.get("min"), f"{where}.min")
        hi = positive(spec.get("max"), f"{where}.max")
        if hi < lo:
            raise TraceError(f"{where}: max {hi:g} < min {lo:g}")
        out = rng.integers(int(round(lo)), int(round(hi)) + 1, n)
    elif dist == "lognormal":
        sigma = nonnegative(spec.get("sigma", 0.5), f"{where}.sigma")
        if "median" in spec:
            mu = np.log(positive(spec["median"], f"{where}.median"))
        else:
            mu = np.log(positive(spec.get("mean"), f"{where}.mean")) - 0.5 * sigma * sigma
        out = np.rint(rng.lognormal(mu, sigma, n)).astype(np.int64)
    elif dist == "discrete":
        values = np.asarray(spec.get("values", []), dtype=np.float64)
        if values.ndim != 1 or not len(values) or np.any(values < 1):
            raise TraceError(f"{where}.values: expected a non-empty list of lengths >= 1")
        weights = spec.get("weights")
        p = None
        if weights is not None:
            p = np.asarray(weights, dtype=np.float64)
            if p.shape != values.shape or np.any(p < 0) or not p.sum() > 0:
                raise TraceError(f"{where}.weights: expected {len(values)} weights >= 0")
            p = p / p.sum()
        out = np.rint(values[rng.choice(len(values), n, p=p)]).astype(np.int64)
    elif dist == "empirical":
        src = empirical_source(spec, load_source, where)
        column = src.prompt_tokens if side == "prompt" else src.output_tokens
        out = column[rng.integers(0, len(column), n)].astype(np.int64)
    else:
        raise TraceError(f"{where}.dist: unknown length distribution {dist!r} "
                         f"(expected one of {', '.join(DISTS)})")
    lo = int(number(spec.get("min", 1), f"{where}.min")) if dist == "lognormal" else 1
    hi = spec.get("max") if dist == "lognormal" else None
    out = np.maximum(out, max(lo, 1))
    if hi is not None:
        out = np.minimum(out, int(number(hi, f"{where}.max")))
    return out.astype(np.int32)


def parse_length_flag(text: str, flag: str) -> dict:
    """`--prompt-len` / `--output-len` values: `128`, `fixed:128`, `uniform:10:100`,
    `lognormal:MEAN:SIGMA`, `empirical:FILE`."""
    from twinbench.traces.errors import TwinbenchError

    parts = text.split(":")
    try:
        if len(parts) == 1:
            return {"dist": "fixed", "value": int(parts[0])}
        kind = parts[0]
        if kind == "fixed" and len(parts) == 2:
            return {"dist": "fixed", "value": int(parts[1])}
        if kind == "uniform" and len(parts) == 3:
            return {"dist": "uniform", "min": int(parts[1]), "max": int(parts[2])}
        if kind == "lognormal" and len(parts) == 3:
            return {"dist": "lognormal", "mean": float(parts[1]), "sigma": float(parts[2])}
        if kind == "empirical" and len(parts) >= 2:
            return {"dist": "empirical", "source": os.path.expanduser(":".join(parts[1:]))}
    except ValueError:
        pass
    raise TwinbenchError(f"{flag} {text!r}: expected N, fixed:N, uniform:MIN:MAX, "
                         "lognormal:MEAN:SIGMA or empirical:FILE")
