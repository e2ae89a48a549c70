"""Choosing `max_num_seqs` from a throughput/latency-vs-batch curve.

Three selectable rules (seed paper "Mind the Memory Gap", arXiv 2503.08311, and two more):
- `EfficiencyRule`: the largest B whose marginal efficiency T(B) / (B·T(1)) stays ≥ ε and whose
  ITL stays ≤ a limit (default 5 × the ITL at B = 32) — the paper's rule, mean ITL as there;
- `PeakFractionRule`: the smallest B reaching X % of the peak throughput;
- `LatencySLORule`: the highest-throughput B whose latency percentiles meet SLOs.
Plus knee detection: Kneedle (largest gap between the normalised curve and its chord) and a
least-squares fit of the linear step model ITL = a + b·B, whose knees have closed forms.

Every rule also names the bracket (two sampled batches) in which its answer could move if the
curve were sampled more finely, so the sweep can bisect there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

THROUGHPUT = "output_throughput"   # vLLM key names (DESIGN §3)
MEAN_ITL = "mean_itl_ms"


@dataclass
class BatchCurve:
    """Metrics per sampled batch limit, sorted by batch; keys are vLLM metric names."""

    batch: np.ndarray
    metrics: dict[str, np.ndarray]

    @staticmethod
    def from_points(points: dict[int, dict[str, float]]) -> "BatchCurve":
        bs = sorted(points)
        keys = sorted(set().union(*(points[b].keys() for b in bs))) if bs else []
        return BatchCurve(np.array(bs, dtype=np.int64),
                          {k: np.array([float(points[b].get(k, np.nan)) for b in bs])
                           for k in keys})

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.metrics:
            raise KeyError(f"metric {key!r} was not measured (have: {sorted(self.metrics)})")
        return self.metrics[key]

    def at(self, key: str, b: float) -> float:
        """Metric at batch b, linearly interpolated between sampled batches."""
        return float(np.interp(b, self.batch, self[key]))


@dataclass(frozen=True)
class Choice:
    batch: int | None
    reason: str
    bracket: tuple[int, int] | None = None   # sampled neighbours the answer could move between


def _bracket(batch: np.ndarray, i: int, j: int) -> tuple[int, int] | None:
    if 0 <= i < len(batch) and 0 <= j < len(batch) and batch[j] - batch[i] > 1:
        return int(batch[i]), int(batch[j])
    return None


@dataclass(frozen=True)
class EfficiencyRule:
    eps: float = 0.2
    itl_factor: float = 5.0
    itl_ref_batch: int = 32
    itl_limit_ms: float | None = None       # overrides itl_factor × ITL(itl_ref_batch)
    itl_metric: str = MEAN_ITL

    name = "efficiency"

    def describe(self) -> str:
        limit = (f"{self.itl_limit_ms:g} ms" if self.itl_limit_ms is not None
                 else f"{self.itl_factor:g}x {self.itl_metric} at B={self.itl_ref_batch}")
        return f"largest B with T(B)/(B*T(1)) >= {self.eps:g} and {self.itl_metric} <= {limit}"

    def itl_limit(self, curve: BatchCurve) -> float:
        if self.itl_limit_ms is not None:
            return self.itl_limit_ms
        return self.itl_factor * curve.at(self.itl_metric, min(self.itl_ref_batch,
                                                                int(curve.batch[-1])))

    def efficiency(self, curve: BatchCurve) -> np.ndarray:
        if curve.batch[0] != 1:
            raise ValueError("the efficiency rule needs the curve sampled at B = 1")
        t = curve[THROUGHPUT]
        return t / (curve.batch * t[0])

    def choose(self, curve: BatchCurve) -> Choice:
        ok = (self.efficiency(curve) >= self.eps) & (curve[self.itl_metric] <= self.itl_limit(curve))
        if not ok[0]:
            return Choice(None, f"B=1 already fails ({self.describe()})")
        # "stays above": the answer is the end of the passing prefix, not a later lucky point
        last = len(ok) - 1 if ok.all() else int(np.argmin(ok)) - 1
        return Choice(int(curve.batch[last]), self.describe(),
                      _bracket(curve.batch, last, last + 1))


@dataclass(frozen=True)
class PeakFractionRule:
    fraction: float = 0.9
    name = "peak"

    def describe(self) -> str:
        return f"smallest B with T(B) >= {100 * self.fraction:g}% of the peak throughput"

    def choose(self, curve: BatchCurve) -> Choice:
        t = curve[THROUGHPUT]
        i = int(np.argmax(t >= self.fraction * np.nanmax(t)))
        return Choice(int(curve.batch[i]), self.describe(), _bracket(curve.batch, i - 1, i))


@dataclass(frozen=True)
class LatencySLORule:
    """SLOs on percentiles, e.g. {"p99_itl_ms": 50.0, "p99_ttft_ms": 2000.0} (inclusive)."""

    slos: dict[str, float] = field(default_factory=dict)
    name = "slo"

    def __post_init__(self) -> None:
        for key in self.slos:
            if not key.startswith("p") or not key.endswith("_ms"):
                raise ValueError(f"SLO {key!r} must be a percentile metric like p99_itl_ms "
                                 "(means hide tails)")

    def describe(self) -> str:
        return "highest-throughput B with " + ", ".join(
            f"{k} <= {v:g}" for k, v in sorted(self.slos.items()))

    def choose(self, curve: BatchCurve) -> Choice:
        ok = np.ones(len(curve.batch), dtype=bool)
        for key, limit in self.slos.items():
            ok &= curve[key] <= limit
        if not ok.any():
            return Choice(None, f"no sampled B meets {self.describe()}")
        t = np.where(ok, curve[THROUGHPUT], -np.inf)
        i = int(np.argmax(t))  # first max: ties go to the smaller batch
        nxt = i + 1 if i + 1 < len(ok) and not ok[i + 1] else i
        return Choice(int(curve.batch[i]), self.describe(), _bracket(curve.batch, i, nxt))


Rule = EfficiencyRule | PeakFractionRule | LatencySLORule


# ---- knees ------------------------------------------------------------------------------
def kneedle(batch: np.ndarray, throughput: np.ndarray) -> Choice:
    """Kneedle knee: argmax of normalised T minus normalised B (concave increasing curve)."""
    b = np.asarray(batch, dtype=float)
    t = np.asarray(throughput, dtype=float)
    span_t = t[-1] - t[0]
    if len(b) < 3 or span_t <= 0:
        return Choice(None, "curve too short or not increasing for a knee")
    gap = (t - t[0]) / span_t - (b - b[0]) / (b[-1] - b[0])
    i = int(np.argmax(gap))
    lo, hi = max(i - 1, 0), min(i + 1, len(b) - 1)
    # the argmax of a concave gap lies between the sampled neighbours of the sampled argmax
    return Choice(int(b[i]), "Kneedle (max of normalised T minus normalised B)",
                  (int(b[lo]), int(b[hi])) if b[hi] - b[lo] > 2 else None)


@dataclass(frozen=True)
class LinearStepModel:
    """Decode step time a + b·B (ms) at a fixed context, so T(B) = 1000·B / (a + b·B) tok/s."""

    a_ms: float
    b_ms: float

    @staticmethod
    def fit(batch: np.ndarray, itl_ms: np.ndarray) -> "LinearStepModel":
        b, a = np.polyfit(np.asarray(batch, dtype=float), np.asarray(itl_ms, dtype=float), 1)
        return LinearStepModel(float(a), float(b))

    def throughput(self, batch) -> np.ndarray:
        batch = np.asarray(batch, dtype=float)
        return 1000.0 * batch / (self.a_ms + self.b_ms * batch)

    def itl_ms(self, batch) -> np.ndarray:
        return self.a_ms + self.b_ms * np.asarray(batch, dtype=float)

    def efficiency_knee(self, eps: float, itl_factor: float = 5.0, itl_ref_batch: int = 32,
                        itl_limit_ms: float | None = None) -> float:
        """Largest real B with (a+b)/(a+bB) >= eps and a + bB <= ITL limit."""
        by_eps = ((self.a_ms + self.b_ms) / eps - self.a_ms) / self.b_ms
        limit = itl_limit_ms if itl_limit_ms is not None else \
            itl_factor * (self.a_ms + self.b_ms * itl_ref_batch)
        return min(by_eps, (limit - self.a_ms) / self.b_ms)

    def kneedle_knee(self, b_lo: float, b_hi: float) -> float:
        """Where T'(B) = a/(a+bB)^2 equals the chord slope of T over [b_lo, b_hi]."""
        t_lo, t_hi = self.throughput([b_lo, b_hi]) / 1000.0
        slope = (t_hi - t_lo) / (b_hi - b_lo)
        return (math.sqrt(self.a_ms / slope) - self.a_ms) / self.b_ms
