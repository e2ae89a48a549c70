"""Statistics exactly as vLLM `bench serve` computes them, plus the trend test for starvation.

mean / median / population std / percentiles use NumPy's defaults (`np.mean`, `np.median`,
`np.std` with ddof 0, `np.percentile` linear), each applied to the same float64 array in the
same order as vLLM, so a figure matches vLLM's to the last bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twinbench.reports.sketch import QuantileSketch

DEFAULT_PERCENTILES = (50, 90, 95, 99)


def percentile_word(p: float) -> str:
    """vLLM's key spelling: `p99` for whole numbers, `p99.9` otherwise."""
    return str(int(p)) if int(p) == p else str(p)


def stat_keys(metric: str, percentiles=DEFAULT_PERCENTILES) -> list[str]:
    keys = [f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms"]
    keys += [f"p{percentile_word(p)}_{metric}_ms" for p in percentiles]
    return keys


def describe_ms(metric: str, values_s: np.ndarray, percentiles=DEFAULT_PERCENTILES,
                owned: bool = False, moments: tuple[float, float] | None = None
                ) -> dict[str, float | None]:
    """mean/median/std/pXX of `values_s` in ms under vLLM's key names; None when empty.

    Bit-identical to vLLM's `np.mean(x)`, `np.median(x)`, `np.std(x)`, `np.percentile(x, p)`
    (times 1000), but every order statistic comes from one partition of one copy (`owned`:
    partition `values_s` itself), which matters for pooled ITL of 10^8 chunks. `moments`:
    (mean, std) already taken by `moments()` (from the same values in their original order).
    """
    keys = stat_keys(metric, percentiles)
    v = np.asarray(values_s, dtype=np.float64)
    if v.size == 0:
        return dict.fromkeys(keys)
    mean, std = moments if moments is not None else _moments(v)
    out = {keys[0]: float(mean * 1000), keys[2]: float(std * 1000)}
    median, pcts = order_statistics(v, percentiles, owned=owned)
    out[keys[1]] = float(median * 1000)
    for key, value in zip(keys[3:], pcts):
        out[key] = float(value * 1000)
    return {k: out[k] for k in keys}


def _moments(v: np.ndarray) -> tuple[float, float]:
    return float(np.mean(v)), _std(v)


def moments(values_s: np.ndarray) -> tuple[float, float]:
    """(np.mean, np.std) of `values_s`, to hand to `describe_ms` when the array is going to
    be reordered (partitioned) before it is described."""
    return _moments(np.asarray(values_s, dtype=np.float64))


LARGE = 1 << 20  # above this many samples, std is computed in blocks (no full-size temporary)
PAIRWISE_LEAF = 1 << 16  # block of the blocked std: NumPy's pairwise sum is rebuilt above it


def _std(v: np.ndarray) -> float:
    """np.std (population), bit for bit. For huge arrays without np.std's temporary as large
    as the input: NumPy sums the squared deviations pairwise (halves rounded down to a
    multiple of 8, numpy/_core/src/umath/loops_utils.h `pairwise_sum`); the same halving is
    done here down to blocks of PAIRWISE_LEAF, each summed by NumPy itself, so every partial
    sum and the result are the ones np.std computes."""
    if len(v) <= LARGE:
        return float(np.std(v))
    mean = np.mean(v)
    scratch = np.empty(PAIRWISE_LEAF, dtype=np.float64)

    def sum_sq(x: np.ndarray) -> np.floating:
        n = len(x)
        if n <= PAIRWISE_LEAF:
            d = np.subtract(x, mean, out=scratch[:n])
            np.multiply(d, d, out=d)
            return np.add.reduce(d)
        half = n // 2
        half -= half % 8
        return sum_sq(x[:half]) + sum_sq(x[half:])

    return float(np.sqrt(sum_sq(v) / len(v)))


def order_statistics(v: np.ndarray, percentiles, owned: bool = False
                     ) -> tuple[float, list[float]]:
    """(np.median(v), [np.percentile(v, p) for p]) from a single partition.

    Mirrors NumPy's own steps (numpy/lib/_function_base_impl.py: `_median`, and `_quantile`
    with method "linear": virtual index (n-1)·q, neighbours floor and floor+1 clipped to the
    array, `_lerp` that interpolates from the nearer end); tests check equality with NumPy.
    """
    n = len(v)
    q = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    virtual = (n - 1) * q
    prev = np.floor(virtual).astype(np.intp)
    nxt = np.minimum(prev + 1, n - 1)
    prev = np.minimum(prev, n - 1)
    mid = n // 2
    kth = np.unique(np.concatenate(([mid, max(mid - 1, 0)], prev, nxt)))
    part = v if owned else v.copy()
    _select_ranks(part, kth)
    median = part[mid] if n % 2 else np.mean(part[mid - 1:mid + 1])
    a, b = part[prev], part[nxt]
    gamma = virtual - np.floor(virtual)
    diff = b - a
    lerp = a + diff * gamma
    lerp = np.where(gamma >= 0.5, b - diff * (1 - gamma), lerp)
    return float(median), [float(x) for x in lerp]


def _select_ranks(part: np.ndarray, ranks: np.ndarray) -> None:
    """Reorder `part` in place so that part[k] is its k-th smallest for every k in `ranks`
    (ascending), as `part.partition(ranks)` does. Each rank is selected only among the
    elements above the previous one: for the median and upper percentiles that is ~2.3 passes
    over the data, where NumPy's multi-kth partition measured ~6.5 (10^8 values: 0.6 s vs
    1.8 s). The k-th smallest value is unique, so the figures are the same."""
    lo = 0
    for k in ranks.tolist():
        if k >= lo:
            part[lo:].partition(k - lo)
            lo = k + 1


def describe_sketch_ms(metric: str, sketch: QuantileSketch, percentiles=DEFAULT_PERCENTILES
                       ) -> dict[str, float | None]:
    """The same keys from a quantile sketch (quantiles within its relative accuracy)."""
    keys = stat_keys(metric, percentiles)
    if sketch.count <= 0:
        return dict.fromkeys(keys)
    qs = sketch.quantiles([0.5] + [p / 100 for p in percentiles]) * 1000
    out = {keys[0]: sketch.mean * 1000, keys[1]: float(qs[0]), keys[2]: sketch.std * 1000}
    for key, q in zip(keys[3:], qs[1:]):
        out[key] = float(q)
    return out


@dataclass
class TrendTest:
    """Mann-Kendall test for an upward trend (one-sided), normal approximation with ties."""

    n: int
    s: int
    z: float
    p_value: float  # P(S >= s) under no trend

    def to_dict(self) -> dict:
        return {"n": self.n, "s": self.s, "z": self.z, "p_value": self.p_value}


def mann_kendall_upward(x: np.ndarray) -> TrendTest | None:
    """S = sum over i<j of sign(x_j - x_i), in time order; None below 3 samples.

    Up to `_MK_PAIRWISE` samples (starvation tests 20 block medians) S is summed over all
    pairs directly; beyond that it comes in O(n log n) from Kendall's tau between time and
    value (time has no ties), so a million samples cost well under a second. The p-value is
    the normal tail with the tie-corrected variance and a continuity correction.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 3:
        return None
    _, counts = np.unique(x, return_counts=True)
    n0 = n * (n - 1) / 2
    n_tied = float(np.sum(counts * (counts - 1) / 2))
    if n_tied == n0:  # all values equal: no trend
        return TrendTest(n, 0, 0.0, 1.0)
    if n <= _MK_PAIRWISE:
        s = int(np.triu(np.sign(x[None, :] - x[:, None]), k=1).sum())
    else:  # scipy.stats is imported only here: its import alone costs ~1 s of CPU
        from scipy.stats import kendalltau
        tau = kendalltau(np.arange(n), x).statistic
        s = int(round(tau * math.sqrt(n0 * (n0 - n_tied))))
    var = (n * (n - 1) * (2 * n + 5) - float(np.sum(counts * (counts - 1) * (2 * counts + 5)))) / 18
    z = 0.0 if s == 0 else (s - np.sign(s)) / math.sqrt(var)  # continuity correction
    return TrendTest(n, s, float(z), 0.5 * math.erfc(float(z) / math.sqrt(2)))


_MK_PAIRWISE = 2000  # n x n signs: 32 MB at this size


def smape(a: float | None, b: float | None) -> float | None:
    """Symmetric MAPE in the common 0-200 % convention; 0/0 = 0; None if either is missing."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    den = (abs(a) + abs(b)) / 2
    return 0.0 if den == 0 else 100.0 * abs(a - b) / den


def smape_paper(a: float | None, b: float | None) -> float | None:
    """The seed paper's convention: half of the common one (0-100 %)."""
    s = smape(a, b)
    return None if s is None else s / 2
