"""Alibaba ServeGen per-client statistics, sampled into requests.

A client is the pair `chunk-N-trace.csv` + `chunk-N-dataset.json` and becomes one tenant
(`client-N`). The trace CSV has no header: `window_start_s, rate_rps, iat_cv, dist, p1, p2`
per 10-minute window, `dist` Gamma or Weibull with scipy's (shape, scale), or empty for no
traffic. `rate_rps` is authoritative: sampled gaps are rescaled to mean 1/rate. The dataset
JSON maps 6-hour window starts to `{"input_tokens": "<python dict literal {tokens: p}>",
"output_tokens": ...}`; those literals are parsed with `ast.literal_eval` (never `eval`) and
each 10-minute window uses the 6-hour window that contains it.

Fourteen days of one client hold ~10^8 requests, so only `window=(start_s, end_s)` is
sampled (default the first 600 s); arrivals are relative to `start_s`.
"""
from __future__ import annotations

import ast
import glob
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from twinbench.traces.core import Trace, TraceError
from twinbench.traces.table import file_meta
from twinbench.traces.textfile import read_lines

DEFAULT_WINDOW = (0.0, 600.0)
MAX_EXPECTED_REQUESTS = 5_000_000
CLIENT_RE = re.compile(r"chunk-(\d+)-(trace\.csv|dataset\.json)$")


@dataclass
class RateWindow:
    start_s: float
    length_s: float
    rate: float
    dist: str
    shape: float
    scale: float


def client_files(path: str) -> list[tuple[str, str, str | None]]:
    """(client name, trace csv, dataset json or None) for a file or a directory of clients."""
    if os.path.isdir(path):
        traces = sorted(glob.glob(os.path.join(path, "chunk-*-trace.csv")),
                        key=lambda p: int(CLIENT_RE.search(p).group(1)))
        if not traces:
            raise TraceError("no ServeGen chunk-N-trace.csv files in this directory", path)
    else:
        m = CLIENT_RE.search(os.path.basename(path))
        if m and m.group(2) == "dataset.json":
            traces = [os.path.join(os.path.dirname(path), f"chunk-{m.group(1)}-trace.csv")]
        else:
            traces = [path]
    out = []
    for t in traces:
        m = CLIENT_RE.search(os.path.basename(t))
        number = m.group(1) if m else os.path.splitext(os.path.basename(t))[0]
        dataset = os.path.join(os.path.dirname(t), f"chunk-{number}-dataset.json")
        out.append((f"client-{number}", t, dataset if os.path.exists(dataset) else None))
    return out


def parse_rate_windows(path: str) -> list[RateWindow]:
    lines = read_lines(path)
    rows: list[tuple[int, list[str]]] = [(i, ln.split(",")) for i, ln in enumerate(lines, 1)
                                         if ln.strip()]
    windows = []
    for i, f in rows:
        if len(f) != 6:
            raise TraceError(f"{len(f)} fields, expected 6 (window_start_s, rate_rps, iat_cv, "
                             "dist, shape, scale)", path, i)
        try:
            start, rate, _cv, shape, scale = (float(f[0]), float(f[1]), float(f[2] or 0),
                                              float(f[4] or 0), float(f[5] or 0))
        except ValueError:
            bad = next(x for x in f[:3] + f[4:] if not is_float(x or "0"))
            raise TraceError(f"{bad!r} is not a number", path, i) from None
        if not all(map(math.isfinite, (start, rate, shape, scale))):
            raise TraceError("non-finite number", path, i)
        dist = f[3].strip()
        if dist not in ("Gamma", "Weibull", ""):
            raise TraceError(f"unknown inter-arrival distribution {dist!r} "
                             "(expected Gamma, Weibull or empty)", path, i)
        if rate < 0:
            raise TraceError(f"rate must be >= 0, got {rate:g}", path, i)
        if dist and rate > 0 and not (shape > 0 and scale > 0):
            raise TraceError(f"{dist} parameters must be > 0, got ({shape:g}, {scale:g})",
                             path, i)
        if windows and start <= windows[-1].start_s:
            raise TraceError(f"window start {start:g} not after {windows[-1].start_s:g}", path, i)
        windows.append(RateWindow(start, 0.0, rate, dist, shape, scale))
    if not windows:
        raise TraceError("no windows", path, 1)
    step = windows[1].start_s - windows[0].start_s if len(windows) > 1 else 600.0
    for a, b in zip(windows, windows[1:]):
        a.length_s = b.start_s - a.start_s
    windows[-1].length_s = step
    return windows


def is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def gap_mean(w: RateWindow) -> float:
    if w.dist == "Gamma":
        return w.shape * w.scale
    if w.dist == "Weibull":
        return w.scale * math.gamma(1.0 + 1.0 / w.shape)
    return 1.0


def sample_arrivals(windows: list[RateWindow], a: float, b: float,
                    rng: np.random.Generator) -> np.ndarray:
    out = []
    for w in windows:
        lo, hi = max(a, w.start_s), min(b, w.start_s + w.length_s)
        if hi <= lo or w.rate <= 0:
            continue
        n = int(w.rate * w.length_s * 1.5 + 10 * math.sqrt(w.rate * w.length_s) + 20)
        t = np.empty(0)
        last = w.start_s
        while last < hi:  # a renewal stream over the whole window, cut to [lo, hi)
            if w.dist == "Gamma":
                gaps = rng.gamma(w.shape, 1.0, n)
            elif w.dist == "Weibull":
                gaps = rng.weibull(w.shape, n)
            else:  # rate without a distribution: Poisson
                gaps = rng.exponential(1.0, n)
            unit = gap_mean(RateWindow(0, 0, 0, w.dist, w.shape, 1.0))
            more = last + np.cumsum(gaps * (1.0 / (w.rate * unit)))
            t = np.concatenate([t, more])
            last = more[-1]
        out.append(t[(t >= lo) & (t < hi)])
    return np.concatenate(out) if out else np.empty(0)


def parse_length_windows(path: str) -> tuple[np.ndarray, list[tuple[str, object]], str]:
    """Sorted 6-h window starts and their raw entries (literals parsed lazily)."""
    text = "\n".join(read_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"invalid JSON: {e.msg}", path, e.lineno) from None
    if not isinstance(data, dict) or not data:
        raise TraceError("expected an object of {window_start_s: {input_tokens, output_tokens}}",
                         path, 1)
    try:
        starts = sorted((float(k), k) for k in data)
    except ValueError:
        bad = next(k for k in data if not is_float(k))
        raise TraceError(f"window key {bad!r} is not a number", path, key_line(text, bad)) \
            from None
    return np.array([s for s, _ in starts]), [(k, data[k]) for _, k in starts], text


def key_line(text: str, key: str) -> int:
    pos = text.find(f'"{key}"')
    return text.count("\n", 0, max(pos, 0)) + 1


def length_distribution(keyed: tuple[str, object], side: str, path: str, text: str
                        ) -> tuple[np.ndarray, np.ndarray]:
    key, entry = keyed
    raw = entry.get(side) if isinstance(entry, dict) else None
    line = key_line(text, key)
    if not isinstance(raw, str):
        raise TraceError(f"window {key}: missing {side!r} (a dict literal string)", path, line)
    try:
        table = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise TraceError(f"window {key}: {side} is not a Python dict literal", path, line) \
            from None
    if not isinstance(table, dict) or not table:
        raise TraceError(f"window {key}: {side} is not a non-empty {{tokens: probability}} dict",
                         path, line)
    try:
        values = np.array(list(table.keys()), dtype=np.float64)
        probs = np.array(list(table.values()), dtype=np.float64)
    except (TypeError, ValueError):
        raise TraceError(f"window {key}: {side} holds non-numeric entries", path, line) from None
    if np.any(values < 1) or np.any(probs < 0) or not probs.sum() > 0 or \
            not np.all(np.isfinite(probs)):
        raise TraceError(f"window {key}: {side} needs lengths >= 1 and probabilities >= 0",
                         path, line)
    return np.rint(values).astype(np.int64), probs / probs.sum()


def sample_lengths(arrivals: np.ndarray, dataset: str, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    starts, entries, text = parse_length_windows(dataset)
    which = np.clip(np.searchsorted(starts, arrivals, side="right") - 1, 0, len(starts) - 1)
    prompt = np.empty(len(arrivals), dtype=np.int64)
    output = np.empty(len(arrivals), dtype=np.int64)
    for k in np.unique(which):
        rows = np.flatnonzero(which == k)
        for side, dest in (("input_tokens", prompt), ("output_tokens", output)):
            values, probs = length_distribution(entries[k], side, dataset, text)
            dest[rows] = values[rng.choice(len(values), len(rows), p=probs)]
    return prompt, output


def load_servegen(path: str, strict: bool = False, window: tuple[float, float] | None = None,
                  seed: int = 0, lengths: dict | None = None, **_options) -> Trace:
    """`lengths` (a length spec as in workload files) serves clients without a dataset."""
    a, b = window or DEFAULT_WINDOW
    if not b > a:
        raise TraceError(f"window {a:g}:{b:g} is empty", path)
    clients = client_files(path)
    parts = []
    for k, (name, trace_csv, dataset) in enumerate(clients):
        windows = parse_rate_windows(trace_csv)
        if dataset is None and lengths is None:
            raise TraceError(f"no chunk dataset JSON beside this ServeGen trace for {name}, "
                             "so no token lengths (pass lengths=...)", trace_csv, 1)
        expected = sum(w.rate * max(0.0, min(b, w.start_s + w.length_s) - max(a, w.start_s))
                       for w in windows)
        if expected > MAX_EXPECTED_REQUESTS:
            raise TraceError(f"window {a:g}:{b:g} s holds ~{expected:,.0f} requests; choose a "
                             "shorter --window", trace_csv)
        number = int(re.sub(r"\D", "", name) or k)
        arr_rng, len_rng = (np.random.default_rng(s) for s in
                            np.random.SeedSequence([seed, number]).spawn(2))
        t = sample_arrivals(windows, a, b, arr_rng)
        if dataset is None:
            from twinbench.traces import lengths as length_models

            p, o = length_models.sample_lengths(
                lengths, len_rng, len(t),
                length_models.default_source_loader(os.path.dirname(os.path.abspath(path))))
        else:
            p, o = sample_lengths(t, dataset, len_rng)
        parts.append((t - a, p, o, np.full(len(t), k, dtype=np.int32)))
    t = np.concatenate([x[0] for x in parts])
    order = np.argsort(t, kind="stable")
    if not len(t):
        raise TraceError(f"no traffic in window {a:g}:{b:g} s", path)
    meta = file_meta(path, "servegen", seed=seed, window_s=[a, b], origin_offset_s=a,
                     clients=[c[0] for c in clients])
    return Trace(arrival_s=t[order],
                 adapter_idx=np.full(len(t), -1, dtype=np.int32),
                 prompt_tokens=np.concatenate([x[1] for x in parts])[order],
                 output_tokens=np.concatenate([x[2] for x in parts])[order],
                 tenant_idx=np.concatenate([x[3] for x in parts])[order],
                 tenants=[c[0] for c in clients], meta=meta)
