"""A mergeable quantile sketch with bounded relative error (log-bucketed, DDSketch-style).

Used instead of exact per-chunk token timestamps for very large runs (`token_timestamps=
"sketch"`): the twin adds each latency sample here and the run-file footer stores the sketch.

A value x > 0 falls in bucket i = ceil(log_gamma(x)) with gamma = (1 + a) / (1 - a); the bucket
is represented by 2 gamma^i / (gamma + 1), which is within relative error a of every value in
it. Buckets are a dense NumPy array over [offset, offset + len), grown on demand, so adding a
batch is one vectorised `bincount`. Zeros are counted apart; negative values (clock skew) are
kept in a mirrored store so nothing is dropped. Min and max are exact and clamp the estimates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SKETCH_FORMAT = "twinbench-ddsketch/1"
# Below this magnitude a value counts as zero (1 ns on a seconds scale is far below clock jitter).
_MIN_POSITIVE = 1e-12


@dataclass
class _Store:
    """Dense bucket counts for indices offset .. offset + len(counts) - 1."""

    offset: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    def add(self, idx: np.ndarray, weights: np.ndarray | None) -> None:
        if idx.size == 0:
            return
        lo, hi = int(idx.min()), int(idx.max())
        self._cover(lo, hi)
        add = np.bincount(idx - self.offset, weights=weights, minlength=len(self.counts))
        self.counts += add

    def _cover(self, lo: int, hi: int) -> None:
        if self.counts.size == 0:
            self.offset, self.counts = lo, np.zeros(hi - lo + 1)
            return
        cur_hi = self.offset + len(self.counts) - 1
        new_lo, new_hi = min(lo, self.offset), max(hi, cur_hi)
        if new_lo == self.offset and new_hi == cur_hi:
            return
        grown = np.zeros(new_hi - new_lo + 1)
        grown[self.offset - new_lo: self.offset - new_lo + len(self.counts)] = self.counts
        self.offset, self.counts = new_lo, grown

    def merge(self, other: "_Store") -> None:
        if other.counts.size == 0:
            return
        self._cover(other.offset, other.offset + len(other.counts) - 1)
        start = other.offset - self.offset
        self.counts[start:start + len(other.counts)] += other.counts

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def to_json(self) -> dict:
        nz = np.flatnonzero(self.counts)
        if nz.size == 0:
            return {"offset": 0, "counts": []}
        trimmed = self.counts[nz[0]: nz[-1] + 1]
        return {"offset": self.offset + int(nz[0]), "counts": _compact(trimmed)}

    @staticmethod
    def from_json(d: dict) -> "_Store":
        return _Store(int(d.get("offset", 0)), np.asarray(d.get("counts", []), dtype=np.float64))


def _compact(a: np.ndarray) -> list:
    """Counts as ints when they are whole (the usual unweighted case): smaller JSON."""
    if np.all(a == np.round(a)):
        return a.astype(np.int64).tolist()
    return a.tolist()


class QuantileSketch:
    """Mergeable quantile sketch; `quantile(q)` is within `relative_accuracy` of the true value.

    The guarantee is the DDSketch one: for the rank-q sample x_q (lower rank, as in DDSketch),
    the estimate e satisfies |e - x_q| <= a |x_q|.
    """

    def __init__(self, relative_accuracy: float = 0.005):
        if not 0 < relative_accuracy < 1:
            raise ValueError("relative_accuracy must be in (0, 1)")
        self.relative_accuracy = float(relative_accuracy)
        self.gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self.gamma)
        self._pos = _Store()
        self._neg = _Store()
        self.zero_count = 0.0
        self.count = 0.0
        self.sum = 0.0
        self.sum_sq = 0.0  # for the population std, which buckets alone cannot give
        self.min = math.inf
        self.max = -math.inf

    # ---- adding ---------------------------------------------------------------------------
    def _index(self, magnitudes: np.ndarray) -> np.ndarray:
        return np.ceil(np.log(magnitudes) / self._log_gamma).astype(np.int64)

    def add(self, values, weights=None) -> "QuantileSketch":
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return self
        w = None if weights is None else np.broadcast_to(
            np.asarray(weights, dtype=np.float64), v.shape).ravel()
        if not np.all(np.isfinite(v)):
            raise ValueError("QuantileSketch.add: values must be finite")
        pos, neg = v > _MIN_POSITIVE, v < -_MIN_POSITIVE
        zero = ~(pos | neg)
        self._pos.add(self._index(v[pos]), None if w is None else w[pos])
        self._neg.add(self._index(-v[neg]), None if w is None else w[neg])
        self.zero_count += float(zero.sum() if w is None else w[zero].sum())
        self.count += float(v.size if w is None else w.sum())
        self.sum += float(v.sum() if w is None else (v * w).sum())
        self.sum_sq += float((v * v).sum() if w is None else (v * v * w).sum())
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        return self

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        if not math.isclose(other.gamma, self.gamma, rel_tol=1e-12):
            raise ValueError("cannot merge sketches with different relative accuracy")
        self._pos.merge(other._pos)
        self._neg.merge(other._neg)
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    # ---- reading --------------------------------------------------------------------------
    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population std from the running sums (exact up to rounding, not bucketed)."""
        if not self.count:
            return math.nan
        return math.sqrt(max(self.sum_sq / self.count - self.mean ** 2, 0.0))

    def _value(self, index: np.ndarray | int) -> np.ndarray:
        return 2.0 * np.power(self.gamma, index) / (self.gamma + 1.0)

    def quantiles(self, qs) -> np.ndarray:
        """Vectorised `quantile` over an array of q in [0, 1]; NaN when empty."""
        q = np.atleast_1d(np.asarray(qs, dtype=np.float64))
        if np.any((q < 0) | (q > 1)):
            raise ValueError("quantile q must be within [0, 1]")
        if self.count <= 0:
            return np.full(q.shape, math.nan)
        # Rank order: most negative first (neg store reversed), zeros, then positives.
        neg_c = self._neg.counts[::-1]
        neg_v = -self._value(self._neg.offset + np.arange(len(self._neg.counts)))[::-1]
        pos_v = self._value(self._pos.offset + np.arange(len(self._pos.counts)))
        counts = np.concatenate([neg_c, [self.zero_count], self._pos.counts])
        values = np.concatenate([neg_v, [0.0], pos_v])
        cum = np.cumsum(counts)
        rank = np.maximum(q * (self.count - 1), 0.0)
        at = np.searchsorted(cum, rank, side="right")
        at = np.minimum(at, len(values) - 1)
        return np.clip(values[at], self.min, self.max)

    def quantile(self, q: float) -> float:
        return float(self.quantiles([q])[0])

    # ---- serialisation --------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": SKETCH_FORMAT, "relative_accuracy": self.relative_accuracy,
            "count": self.count, "sum": self.sum, "sum_sq": self.sum_sq,
            "min": None if self.count == 0 else self.min,
            "max": None if self.count == 0 else self.max,
            "zero_count": self.zero_count,
            "positive": self._pos.to_json(), "negative": self._neg.to_json(),
        }

    @staticmethod
    def from_json(d: dict) -> "QuantileSketch":
        if not isinstance(d, dict) or d.get("format", SKETCH_FORMAT) != SKETCH_FORMAT:
            raise ValueError("not a twinbench quantile sketch")
        s = QuantileSketch(float(d["relative_accuracy"]))
        s._pos = _Store.from_json(d.get("positive") or {})
        s._neg = _Store.from_json(d.get("negative") or {})
        s.zero_count = float(d.get("zero_count", 0.0))
        s.count = float(d.get("count", 0.0))
        s.sum = float(d.get("sum", 0.0))
        s.sum_sq = float(d.get("sum_sq", 0.0))
        s.min = math.inf if d.get("min") is None else float(d["min"])
        s.max = -math.inf if d.get("max") is None else float(d["max"])
        return s

    def __repr__(self) -> str:
        return (f"QuantileSketch(relative_accuracy={self.relative_accuracy}, "
                f"count={self.count:g}, mean={self.mean:.6g})")
