"""Regression gate: `--fail-on "p99_ttft_ms:+10%,output_throughput:-5%"` with noise control.

A bound `metric:+X%` is crossed when NEW exceeds BASE by more than X % (`-X%`: falls below it
by more than X %). A crossing fails the gate only when the change is also unlikely to be noise:
- a moving-block bootstrap gives a (1-α) confidence interval for the relative change, which
  must exclude 0 on the side of the bound. When both runs replayed the same trace, per-request
  metrics are resampled *paired* by request id (the same blocks of requests in both runs);
  otherwise each run is resampled alone with long blocks (at least 1/20 of the run, and twice
  the autocorrelation time), so that queueing's slow swings count as noise. Throughputs are
  resampled over time buckets;
- for latency metrics, a one-sided Mann-Whitney U test of the two runs' samples must also
  reject "no shift" at α;
- with repeated baseline runs (`noise`, see compare.noise_floor), a change no larger than the
  repeats' own range is never a regression: runs of *different* traces differ by more than
  any in-run resampling can see, and only repeats measure that.
Metrics without a resampling model (counts, peaks) are judged on the crossing alone, and say so.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from twinbench.reports.metrics import Summary
from twinbench.traces.errors import TwinbenchError

_BOUND = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*:\s*([+-])\s*([0-9]*\.?[0-9]+)\s*%\s*$")
_LATENCY = re.compile(r"^(mean|median|std|p([0-9.]+))_(ttft_from_arrival|dispatch_lag|ttft|tpot|"
                      r"itl|e2el)_ms$")
_THROUGHPUT_SERIES = {"output_throughput": "output_tokens_per_s",
                      "total_token_throughput": "output_tokens_per_s",
                      "request_throughput": "completed_per_s"}
MAX_SAMPLES = 20000  # larger sample sets are thinned (evenly strided) for the resampling


@dataclass(frozen=True)
class Bound:
    metric: str
    direction: int      # +1: fail if it rises by more than pct; -1: if it falls
    pct: float
    text: str


def parse_fail_on(spec: str, known: set[str] | None = None) -> list[Bound]:
    bounds = []
    for part in [p for p in spec.split(",") if p.strip()]:
        m = _BOUND.match(part)
        if not m:
            raise TwinbenchError(f"--fail-on: cannot read {part.strip()!r}; "
                                 "expected METRIC:+PCT% or METRIC:-PCT%, e.g. p99_ttft_ms:+10%")
        metric, sign, pct = m.group(1), m.group(2), float(m.group(3))
        if known is not None and metric not in known:
            raise TwinbenchError(f"--fail-on: unknown metric {metric!r}")
        bounds.append(Bound(metric, 1 if sign == "+" else -1, pct, part.strip()))
    if not bounds:
        raise TwinbenchError("--fail-on: no bound given")
    return bounds


@dataclass
class GateResult:
    bound: Bound
    base: float | None
    new: float | None
    change_pct: float | None
    ci_pct: tuple[float, float] | None      # bootstrap CI of the relative change, %
    rank_p: float | None                    # one-sided Mann-Whitney p
    crossed: bool
    significant: bool | None                # None: no noise model for this metric
    failed: bool
    verdict: str
    paired: bool = False                    # bootstrap paired by request id / time bucket

    def to_dict(self) -> dict:
        return {"bound": self.bound.text, "metric": self.bound.metric, "base": self.base,
                "new": self.new, "change_pct": self.change_pct,
                "ci_pct": None if self.ci_pct is None else list(self.ci_pct),
                "rank_test_p": self.rank_p, "crossed": self.crossed,
                "significant": self.significant, "failed": self.failed,
                "verdict": self.verdict, "paired": self.paired}


def _thin(x: np.ndarray) -> np.ndarray:
    if len(x) <= MAX_SAMPLES:
        return x
    return x[np.linspace(0, len(x) - 1, MAX_SAMPLES).astype(np.int64)]


def _statistic(kind: str, p: float | None) -> Callable[[np.ndarray], np.ndarray]:
    """Vectorised statistic over axis 1 of a (reps, n) matrix."""
    if kind == "mean":
        return lambda m: m.mean(axis=1)
    if kind == "median":
        return lambda m: np.median(m, axis=1)
    if kind == "std":
        return lambda m: m.std(axis=1)
    return lambda m: np.percentile(m, p, axis=1)


def block_length(x: np.ndarray) -> int:
    """Moving-block length: at least n^(1/3), and twice the integrated autocorrelation time
    (lags summed until the autocorrelation first drops below 0.05), at most n / 4."""
    n = len(x)
    if n < 8:
        return 1
    y = x - x.mean()
    var = float(y @ y)
    if var == 0:
        return 1
    f = np.fft.rfft(y, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n] / var
    below = np.flatnonzero(acf[1:] < 0.05)
    cut = int(below[0]) + 1 if below.size else n
    tau = 1.0 + 2.0 * float(acf[1:cut].sum())
    return int(min(max(n ** (1 / 3), 2 * tau), n / 4)) or 1


def block_bootstrap(xs: tuple[np.ndarray, ...], stat: Callable[[np.ndarray], np.ndarray],
                    reps: int, rng: np.random.Generator, block: int | None = None
                    ) -> list[np.ndarray]:
    """`reps` replicates of stat(x*) for each x in `xs` (all of one length), x* a moving-block
    resample (order kept) drawn with the same indices for every x: a paired bootstrap."""
    n = len(xs[0])
    if n == 0:
        return [np.full(reps, np.nan) for _ in xs]
    L = block or max(block_length(x) for x in xs)
    L = max(1, min(L, n))
    k = -(-n // L)
    outs = [np.empty(reps) for _ in xs]
    step = max(1, 2_000_000 // max(n, 1))  # bound the (reps, n) matrix to ~16 MB
    for lo in range(0, reps, step):
        r = min(step, reps - lo)
        starts = rng.integers(0, n - L + 1, size=(r, k))
        idx = (starts[:, :, None] + np.arange(L)).reshape(r, k * L)[:, :n]
        for x, out in zip(xs, outs):
            out[lo:lo + r] = stat(x[idx])
    return outs


_IDS = {"ttft": "ok_ids", "e2el": "ok_ids", "ttft_from_arrival": "ok_ids", "tpot": "tpot_ids",
        "dispatch_lag": "lag_ids"}


def _paired(base: Summary, new: Summary, family: str
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """Both runs' samples of the same requests (same trace replayed), in base order."""
    key = _IDS.get(family)
    ib = base.samples.get(key) if key else None
    inn = new.samples.get(key) if key else None
    if ib is None or inn is None or len(ib) == 0 or len(inn) == 0:
        return None
    _, at_b, at_n = np.intersect1d(ib.astype(str), inn.astype(str), assume_unique=True,
                                   return_indices=True)
    if len(at_b) < 0.9 * max(len(ib), len(inn)):
        return None
    order = np.argsort(at_b, kind="stable")
    return base.samples[family][at_b[order]], new.samples[family][at_n[order]]


def _samples_for(summary: Summary, metric: str):
    """(kind, family, samples, statistic) of a metric that has a resampling model."""
    m = _LATENCY.match(metric)
    if m:
        kind = "pct" if m.group(1).startswith("p") else m.group(1)
        p = float(m.group(2)) if kind == "pct" else None
        family = m.group(3)
        # ITL: the time-ordered subsample (the full multiset was reordered by partitioning)
        values = summary.samples.get("itl_ordered" if family == "itl" else family)
        if values is None:
            values = summary.samples.get(family)
        return "latency", family, values, _statistic(kind, p)
    if metric in _THROUGHPUT_SERIES and summary.series is not None:
        series = getattr(summary.series, _THROUGHPUT_SERIES[metric])
        return "series", metric, np.asarray(series, dtype=np.float64), _statistic("mean", None)
    return None, None, None, None


def _relative_ci(base: Summary, new: Summary, metric: str, alpha: float, reps: int, seed: int
                 ) -> tuple[str | None, tuple[float, float] | None, np.ndarray | None,
                            np.ndarray | None, bool]:
    kind, family, xb, stat = _samples_for(base, metric)
    _, _, xn, _ = _samples_for(new, metric)
    if kind is None or xb is None or xn is None or not len(xb) or not len(xn):
        return None, None, None, None, False
    rng = np.random.default_rng(seed)
    pair = _paired(base, new, family) if kind == "latency" else (
        (xb, xn) if len(xb) == len(xn) else None)
    if pair is not None:
        sel = np.linspace(0, len(pair[0]) - 1, min(len(pair[0]), MAX_SAMPLES)).astype(np.int64)
        sb, sn = block_bootstrap((pair[0][sel], pair[1][sel]), stat, reps, rng)
    else:
        # different workloads: long blocks (batch means, >= 1/20 of the run) so that the
        # slow swings of queueing load count as noise too
        tb, tn = _thin(xb), _thin(xn)
        (sb,) = block_bootstrap((tb,), stat, reps, rng, max(block_length(tb), len(tb) // 20))
        (sn,) = block_bootstrap((tn,), stat, reps, rng, max(block_length(tn), len(tn) // 20))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = 100.0 * (sn - sb) / np.abs(sb)
    rel = rel[np.isfinite(rel)]
    if not rel.size:
        return kind, None, xb, xn, pair is not None
    lo, hi = np.percentile(rel, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return kind, (float(lo), float(hi)), xb, xn, pair is not None


def regression_gate(base: Summary, new: Summary, bounds: list[Bound], *, alpha: float = 0.05,
                    reps: int = 1000, seed: int = 0, noise=None) -> list[GateResult]:
    """Judge each bound. `noise` (compare.NoiseFloor of repeated baseline runs), when given,
    also excuses a change no larger than the repeats' own range (`range_pct`)."""
    from scipy.stats import mannwhitneyu

    results = []
    for b in bounds:
        if b.metric not in base.metrics and b.metric not in new.metrics:
            raise TwinbenchError(f"--fail-on: unknown metric {b.metric!r}")
        bv, nv = base.metrics.get(b.metric), new.metrics.get(b.metric)
        if bv is None or nv is None:
            results.append(GateResult(b, bv, nv, None, None, None, False, None, False,
                                      "n/a in one run: not judged"))
            continue
        change = 0.0 if bv == nv else (math.inf if bv == 0 else 100.0 * (nv - bv) / abs(bv))
        crossed = change > b.pct if b.direction > 0 else change < -b.pct
        kind, ci, xb, xn, paired = _relative_ci(base, new, b.metric, alpha, reps, seed)
        p_rank = None
        significant: bool | None = None
        if ci is not None:
            significant = bool(ci[0] > 0) if b.direction > 0 else bool(ci[1] < 0)
        if kind == "latency":
            side = "greater" if b.direction > 0 else "less"
            p_rank = float(mannwhitneyu(_thin(xn), _thin(xb), alternative=side).pvalue)
            significant = bool(significant) and p_rank < alpha
        spread = (noise.metrics.get(b.metric) or {}).get("range_pct") if noise else None
        if spread is not None and abs(change) <= spread:
            significant = False
        failed = crossed and significant is not False
        if not crossed:
            verdict = "within bound"
        elif significant is None:
            verdict = "REGRESSION (bound crossed; no noise model for this metric)"
        elif significant:
            verdict = "REGRESSION (bound crossed, beyond noise)"
        else:
            verdict = "bound crossed but within noise: not flagged"
        results.append(GateResult(b, bv, nv, change, ci, p_rank, crossed, significant, failed,
                                  verdict, paired))
    return results
