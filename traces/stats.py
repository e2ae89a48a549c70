"""Summary statistics of a trace: what `twinbench trace inspect` prints.

Definitions (stated so figures can be compared across tools):
- span: last arrival − first arrival; mean rate: 1 / mean inter-arrival gap = (n−1)/span.
- inter-arrival CV: population std / mean of the gaps (1 for Poisson).
- peak W-s rate over mean: the most arrivals in one W-second bin (bins aligned at the first
  arrival, the usual "requests per second" series), divided by W · mean rate.
- token percentiles: NumPy's default (linear) method.
"""
from __future__ import annotations

import numpy as np

from twinbench.traces.core import Trace

PERCENTILES = (50, 90, 95, 99)


def length_stats(values: np.ndarray) -> dict:
    if not len(values):
        return {"mean": None, "min": None, "max": None,
                **{f"p{p}": None for p in PERCENTILES}}
    qs = np.percentile(values, PERCENTILES)
    return {"mean": float(values.mean()), "min": int(values.min()), "max": int(values.max()),
            **{f"p{p}": float(q) for p, q in zip(PERCENTILES, qs)}}


def peak_over_mean(arrival_s: np.ndarray, window_s: float, mean_rate: float) -> float | None:
    if len(arrival_s) < 2 or not mean_rate > 0:
        return None
    bins = np.floor((arrival_s - arrival_s[0]) / window_s).astype(np.int64)
    most = int(np.bincount(bins).max())
    return most / (window_s * mean_rate)


def share_table(idx: np.ndarray, names: list[str], extra: dict | None = None) -> list[dict]:
    counts = np.bincount(idx + 1, minlength=len(names) + 1)  # slot 0 = index -1
    n = max(len(idx), 1)
    rows = []
    if counts[0]:
        rows.append({"name": None, "requests": int(counts[0]), "share": float(counts[0] / n)})
    for k, name in enumerate(names):
        row = {"name": name, "requests": int(counts[k + 1]), "share": float(counts[k + 1] / n)}
        if extra and name in extra:
            row.update(extra[name])
        rows.append(row)
    return rows


def inspect_stats(trace: Trace) -> dict:
    """Counts, rates, burstiness, length percentiles and per-adapter/tenant shares."""
    n = len(trace)
    t = trace.arrival_s
    span = float(t[-1] - t[0]) if n else 0.0
    gaps = np.diff(t)
    mean_rate = (n - 1) / span if n > 1 and span > 0 else None
    cv = float(gaps.std() / gaps.mean()) if len(gaps) and gaps.mean() > 0 else None
    ranks = {a.name: {"rank": a.rank, "path": a.path} for a in trace.adapters}
    out = {
        "requests": n,
        "first_arrival_s": float(t[0]) if n else None,
        "span_s": span,
        "mean_rate_rps": mean_rate,
        "interarrival_cv": cv,
        "peak_1s_over_mean": peak_over_mean(t, 1.0, mean_rate or 0.0),
        "peak_60s_over_mean": peak_over_mean(t, 60.0, mean_rate or 0.0),
        "prompt_tokens": length_stats(trace.prompt_tokens),
        "output_tokens": length_stats(trace.output_tokens),
        "adapters": share_table(trace.adapter_idx, [a.name for a in trace.adapters], ranks),
        "tenants": share_table(trace.tenant_idx, trace.tenants)
        if trace.tenant_idx is not None else [],
        "prefix_blocks": None,
        "trace": trace.identity(),
    }
    out["trace"].pop("adapters")
    if trace.prefix_flat is not None:
        per = np.diff(trace.prefix_offsets)
        unique = len(np.unique(trace.prefix_flat))
        out["prefix_blocks"] = {
            "block_tokens": trace.meta.get("prefix_block_tokens"),
            "mean_per_request": float(per.mean()) if n else 0.0,
            "total": int(len(trace.prefix_flat)), "unique": unique,
            "reuse_fraction": 1.0 - unique / len(trace.prefix_flat)
            if len(trace.prefix_flat) else 0.0}
    return out
