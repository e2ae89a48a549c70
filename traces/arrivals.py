"""Arrival processes: Poisson, gamma (vLLM `--burstiness`), constant, piecewise rates/ramps.

Every process is a renewal process of unit mean in *operational time* mapped through the
cumulative rate Λ(t). With a constant rate that is just `gaps / rate`; with piecewise rates
and linear ramps it is the time-rescaling construction of a non-homogeneous process, so
`burstiness` keeps its meaning under ramps too.

Gamma follows vLLM `bench serve`: shape = burstiness, scale = 1 / (rate · burstiness), so
burstiness 1 is Poisson, < 1 burstier, > 1 smoother (inter-arrival CV = 1/sqrt(burstiness)).
Arrivals start after the first gap (no request at exactly t = 0 unless the process says so).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinbench.traces.core import TraceError

PROCESSES = ("poisson", "gamma", "constant", "piecewise")


@dataclass(frozen=True)
class RateCurve:
    """Piecewise-linear rate: segment k spans [starts[k], starts[k+1]) with rate r0 + slope·τ."""

    starts: np.ndarray      # segment start times, last segment open-ended
    rate0: np.ndarray       # rate at each segment start
    slope: np.ndarray       # rate change per second inside each segment
    cum: np.ndarray         # Λ at each segment start

    def cumulative(self, t: float) -> float:
        k = max(int(np.searchsorted(self.starts, t, side="right")) - 1, 0)
        tau = t - self.starts[k]
        return float(self.cum[k] + self.rate0[k] * tau + 0.5 * self.slope[k] * tau * tau)

    def invert(self, u: np.ndarray) -> np.ndarray:
        """Times t with Λ(t) = u (u sorted)."""
        k = np.searchsorted(self.cum, u, side="right") - 1
        k = np.clip(k, 0, len(self.starts) - 1)
        du = u - self.cum[k]
        r0, s = self.rate0[k], self.slope[k]
        disc = np.maximum(r0 * r0 + 2.0 * s * du, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = 2.0 * du / (r0 + np.sqrt(disc))  # stable root of r0·τ + s·τ²/2 = du
        return self.starts[k] + np.nan_to_num(tau, nan=0.0, posinf=np.inf)


def rate_curve(spec: dict, where: str) -> RateCurve:
    """The rate curve of a process spec: constant `rate` or `segments` of constant/ramp rates."""
    if spec.get("process", "poisson") != "piecewise":
        rate = positive(spec.get("rate"), f"{where}.rate")
        return RateCurve(np.array([0.0]), np.array([rate]), np.array([0.0]), np.array([0.0]))
    segments = spec.get("segments")
    if not isinstance(segments, list) or not segments:
        raise TraceError(f"{where}.segments: expected a non-empty list of "
                         "{{duration_s, rate}} or {{duration_s, rate_from, rate_to}}")
    starts, r0s, slopes, cums = [], [], [], []
    t = u = 0.0
    for j, seg in enumerate(segments):
        name = f"{where}.segments[{j}]"
        if not isinstance(seg, dict):
            raise TraceError(f"{name}: expected an object")
        d = positive(seg.get("duration_s"), f"{name}.duration_s")
        if "rate" in seg:
            a = b = nonnegative(seg["rate"], f"{name}.rate")
        else:
            a = nonnegative(seg.get("rate_from"), f"{name}.rate_from")
            b = nonnegative(seg.get("rate_to"), f"{name}.rate_to")
        starts.append(t), r0s.append(a), slopes.append((b - a) / d), cums.append(u)
        u += 0.5 * (a + b) * d
        t += d
    # after the last segment the final rate holds
    starts.append(t), r0s.append(r0s[-1] + slopes[-1] * (t - starts[-1])), slopes.append(0.0)
    cums.append(u)
    return RateCurve(np.array(starts), np.array(r0s), np.array(slopes), np.array(cums))


def unit_gaps(spec: dict, rng: np.random.Generator, n: int, where: str) -> np.ndarray:
    """`n` inter-arrival gaps with mean 1 in operational time."""
    shape = spec.get("process", "poisson")
    if shape == "piecewise":
        shape = spec.get("shape", "poisson")
    if shape == "poisson":
        return rng.exponential(1.0, n)
    if shape == "gamma":
        b = positive(spec.get("burstiness", 1.0), f"{where}.burstiness")
        return rng.gamma(b, 1.0 / b, n)
    if shape == "constant":
        return np.ones(n)
    raise TraceError(f"{where}.process: unknown arrival process {shape!r} "
                     f"(expected one of {', '.join(PROCESSES)})")


def arrival_times(spec: dict, rng: np.random.Generator, duration_s: float | None = None,
                  count: int | None = None, where: str = "arrival") -> np.ndarray:
    """Arrival times in [0, duration_s), or the first `count` arrivals, sorted."""
    if not isinstance(spec, dict):
        raise TraceError(f"{where}: expected an object like {{\"process\": \"poisson\", "
                         "\"rate\": 2.0}")
    if duration_s is None and count is None:
        raise TraceError(f"{where}: give a duration_s or a number of requests")
    curve = rate_curve(spec, where)
    if count is None:
        target_u = curve.cumulative(float(duration_s))
        need = int(target_u + 6.0 * np.sqrt(target_u) + 16)
    else:
        if curve.rate0[-1] <= 0 and curve.cum[-1] <= 0:
            raise TraceError(f"{where}: rate is zero everywhere, cannot draw {count} requests")
        need = int(count)
    gaps = unit_gaps(spec, rng, need, where)
    u = np.cumsum(gaps)
    if count is None:
        while len(u) and u[-1] < target_u:  # rare: draw more in the same stream
            more = np.cumsum(unit_gaps(spec, rng, need // 2 + 16, where)) + u[-1]
            u = np.concatenate([u, more])
        u = u[u < target_u]
    times = curve.invert(u)
    times = times[np.isfinite(times)]
    if duration_s is not None:
        times = times[times < duration_s]
    return times


def positive(value, name: str) -> float:
    v = number(value, name)
    if not v > 0:
        raise TraceError(f"{name}: must be > 0, got {value!r}")
    return v


def nonnegative(value, name: str) -> float:
    v = number(value, name)
    if v < 0:
        raise TraceError(f"{name}: must be >= 0, got {value!r}")
    return v


def number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise TraceError(f"{name}: expected a finite number, got {value!r}")
    return float(value)
