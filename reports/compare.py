"""Side-by-side comparison of runs: SMAPE per metric, per adapter, starvation agreement,
and the run-to-run noise floor of repeated runs.

SMAPE is `100·|a−b| / ((|a|+|b|)/2)` (0–200 %, 0/0 = 0), the common convention; the seed
paper's halved form `100·|a−b| / (|a|+|b|)` is given too, labelled `smape_paper`. Every other
run is compared with the first (the baseline).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from twinbench.reports.metrics import Summary, summarize
from twinbench.reports.stats import smape, smape_paper

SMAPE_DEFINITION = "SMAPE = 100·|a−b| / ((|a|+|b|)/2), 0–200 %, 0/0 = 0 (common convention)"
SMAPE_PAPER_DEFINITION = "SMAPE (seed paper) = 100·|a−b| / (|a|+|b|), i.e. half the common one"
# Figures that describe the run rather than measure the server; not compared.
NOT_COMPARED = ("num_requests", "offered_requests", "offered_tokens", "offered_output_tokens")


def comparable_keys(summaries: Sequence[Summary]) -> list[str]:
    keys: list[str] = []
    for s in summaries:
        for k, v in s.metrics.items():
            if k not in keys and k not in NOT_COMPARED and (v is None or isinstance(v, (int, float))):
                keys.append(k)
    return keys


@dataclass
class Row:
    metric: str
    values: list[float | None]
    smape: list[float | None]          # run i vs the baseline, i >= 1
    smape_paper: list[float | None]

    def to_dict(self) -> dict:
        return {"metric": self.metric, "values": self.values, "smape_pct": self.smape,
                "smape_paper_pct": self.smape_paper}


def rows_for(summaries: Sequence[Summary]) -> list[Row]:
    rows = []
    for key in comparable_keys(summaries):
        vals = [s.metrics.get(key) for s in summaries]
        base = vals[0]
        rows.append(Row(key, vals, [smape(base, v) for v in vals[1:]],
                        [smape_paper(base, v) for v in vals[1:]]))
    return rows


@dataclass
class Comparison:
    labels: list[str]
    summaries: list[Summary]
    rows: list[Row]
    per_adapter: dict[str, list[Row]]
    adapter_smape_mean: dict[str, list[float | None]]   # metric -> mean SMAPE over adapters
    starvation: dict[str, dict]                         # adapter -> verdict
    notes: list[str] = field(default_factory=list)

    def row(self, metric: str) -> Row:
        return next(r for r in self.rows if r.metric == metric)

    def to_dict(self) -> dict:
        return {
            "labels": self.labels, "baseline": self.labels[0],
            "smape_definition": SMAPE_DEFINITION, "smape_paper_definition": SMAPE_PAPER_DEFINITION,
            "metrics": [r.to_dict() for r in self.rows],
            "per_adapter": {a: [r.to_dict() for r in rows] for a, rows in self.per_adapter.items()},
            "adapter_smape_mean_pct": self.adapter_smape_mean,
            "starvation_agreement": self.starvation,
            "partial_runs": [s.label for s in self.summaries if s.partial],
            "notes": self.notes,
        }


def _starvation_verdicts(summaries: Sequence[Summary]) -> dict[str, dict]:
    adapters = sorted({a for s in summaries for a in s.per_adapter})
    out = {}
    for a in adapters:
        flags: list[bool | None] = []
        reasons: list[list[str]] = []
        for s in summaries:
            st = s.starvation.adapters.get(a) if s.starvation is not None else None
            flags.append(None if st is None else st.starving)
            reasons.append([] if st is None else st.reasons)
        present = [f for f in flags if f is not None]
        if len(present) < len(flags):
            verdict = "missing in some runs"
        elif all(present):
            verdict = "agree: starving"
        elif not any(present):
            verdict = "agree: not starving"
        else:
            verdict = "DISAGREE"
        out[a] = {"verdict": verdict, "starving": flags, "reasons": reasons}
    return out


def compare(*runs: Any, labels: Sequence[str] | None = None, **summarize_kwargs: Any
            ) -> Comparison:
    """Compare runs (Summaries, run paths, Runs or record lists); the first is the baseline."""
    if len(runs) == 1 and isinstance(runs[0], (list, tuple)) and runs[0] and \
            not hasattr(runs[0][0], "arrival_s"):
        runs = tuple(runs[0])
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    summaries = [r if isinstance(r, Summary) else summarize(r, **summarize_kwargs) for r in runs]
    if labels is not None:
        for s, lab in zip(summaries, labels):
            s.label = lab
    names = _unique_labels([s.label for s in summaries])
    rows = rows_for(summaries)
    per_adapter: dict[str, list[Row]] = {}
    common = [a for a in summaries[0].per_adapter if all(a in s.per_adapter for s in summaries)]
    for a in common:
        per_adapter[a] = rows_for([s.per_adapter[a] for s in summaries])
    means: dict[str, list[float | None]] = {}
    if per_adapter:
        for i, row in enumerate(per_adapter[common[0]]):
            cols = []
            for j in range(len(summaries) - 1):
                vals = [per_adapter[a][i].smape[j] for a in common
                        if i < len(per_adapter[a]) and per_adapter[a][i].smape[j] is not None]
                cols.append(float(np.mean(vals)) if vals else None)
            means[row.metric] = cols
    notes = []
    only = sorted({a for s in summaries for a in s.per_adapter} - set(common))
    if only:
        notes.append(f"adapters not in every run (no per-adapter SMAPE): {', '.join(only)}")
    for s in summaries:
        if s.partial:
            notes.append(f"{s.label} is a partial run: {s.partial_reason}")
    return Comparison(labels=names, summaries=summaries, rows=rows, per_adapter=per_adapter,
                      adapter_smape_mean=means, starvation=_starvation_verdicts(summaries),
                      notes=notes)


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        if lab in seen:
            seen[lab] += 1
            out.append(f"{lab}#{seen[lab]}")
        else:
            seen[lab] = 1
            out.append(lab)
    return out


@dataclass
class NoiseFloor:
    """Spread of each metric over repeated runs of one configuration."""

    labels: list[str]
    metrics: dict[str, dict[str, float | None]]

    def to_dict(self) -> dict:
        return {"labels": self.labels, "runs": len(self.labels), "metrics": self.metrics,
                "definition": "mean, sample std (ddof 1), CV % = 100·std/|mean|, range % = "
                              "100·(max−min)/|mean|, and the largest SMAPE (common "
                              "convention) over pairs of runs"}


def noise_floor(*runs: Any, **summarize_kwargs: Any) -> NoiseFloor:
    if len(runs) == 1 and isinstance(runs[0], (list, tuple)):
        runs = tuple(runs[0])
    if len(runs) < 2:
        raise ValueError("a noise floor needs at least two repeated runs")
    summaries = [r if isinstance(r, Summary) else summarize(r, **summarize_kwargs) for r in runs]
    out: dict[str, dict[str, float | None]] = {}
    for key in comparable_keys(summaries):
        vals = [s.metrics.get(key) for s in summaries]
        if any(v is None or not math.isfinite(v) for v in vals):
            continue
        arr = np.asarray(vals, dtype=np.float64)
        mean = float(arr.mean())
        std = float(arr.std(ddof=1))
        pair = [smape(a, b) for a, b in itertools.combinations(vals, 2)]
        out[key] = {"mean": mean, "std": std,
                    "cv_pct": None if mean == 0 else 100 * std / abs(mean),
                    "max_pair_smape_pct": max(p for p in pair if p is not None),
                    "min": float(arr.min()), "max": float(arr.max()),
                    "range_pct": None if mean == 0 else
                    100 * float(arr.max() - arr.min()) / abs(mean)}
    return NoiseFloor(labels=_unique_labels([s.label for s in summaries]), metrics=out)
