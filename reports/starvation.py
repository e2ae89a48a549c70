"""Starvation per adapter and for the run, with the reason (DESIGN §3).

An adapter starves when any of these holds:
- `served / offered` tokens by the window end is below `threshold` (seed paper: 0.9);
- its TTFT-from-arrival trends upward through the run: one-sided Mann-Kendall in arrival
  order, significant at `alpha / k` (Bonferroni over the k adapters tested). The test runs on
  the medians of up to `TREND_BLOCKS` consecutive equal-count blocks of requests: queueing
  makes neighbouring requests' latencies strongly correlated, and on raw samples Mann-Kendall
  (which assumes independence) calls every passing busy period a trend;
- some of its requests never started (no first token) by the horizon, last arrival + drain
  limit (without a drain limit: never started at all).
The run starves when total served / offered tokens is below `threshold`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinbench.reports.stats import TrendTest, mann_kendall_upward

MIN_TREND_SAMPLES = 8  # below this a trend test says nothing useful
TREND_BLOCKS = 20      # block medians tested for a trend "through the run"


def block_medians(x: np.ndarray, blocks: int = TREND_BLOCKS) -> np.ndarray:
    """Medians of `blocks` consecutive, (nearly) equal-count blocks of x (x itself if short)."""
    if len(x) <= blocks:
        return x
    return np.array([np.median(b) for b in np.array_split(x, blocks)])


@dataclass
class AdapterStarvation:
    adapter: str
    starving: bool
    reasons: list[str]
    served_token_ratio: float | None
    trend: TrendTest | None
    trend_alpha: float
    never_started: int

    def to_dict(self) -> dict:
        return {"starving": self.starving, "reasons": self.reasons,
                "served_token_ratio": self.served_token_ratio,
                "trend": None if self.trend is None else self.trend.to_dict(),
                "trend_alpha": self.trend_alpha, "never_started": self.never_started}


@dataclass
class StarvationReport:
    threshold: float
    alpha: float
    run_starving: bool
    run_reason: str
    served_token_ratio: float | None
    adapters: dict[str, AdapterStarvation] = field(default_factory=dict)

    @property
    def starving_adapters(self) -> list[str]:
        return [a for a, s in self.adapters.items() if s.starving]

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "alpha": self.alpha,
                "run_starving": self.run_starving, "run_reason": self.run_reason,
                "served_token_ratio": self.served_token_ratio,
                "starving_adapters": self.starving_adapters,
                "adapters": {a: s.to_dict() for a, s in self.adapters.items()}}


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.3f}"


def assess_starvation(ctx: Any, summary: Any, threshold: float = 0.9,
                      alpha: float = 0.01) -> StarvationReport:
    """`ctx` is metrics._Context; `summary` the run Summary with per-adapter metrics."""
    t = ctx.table
    in_window = (t.arrival_s >= ctx.w0) & (t.arrival_s < ctx.w1)
    started = in_window & np.isfinite(t.first_token_s) & (t.first_token_s < ctx.horizon)
    trends: dict[str, TrendTest | None] = {}
    for k, name in enumerate(t.adapters):
        if name not in summary.per_adapter:
            continue
        rows = np.flatnonzero(started & (t.adapter_idx == k))
        rows = rows[np.argsort(t.arrival_s[rows], kind="stable")]
        x = t.first_token_s[rows] - t.arrival_s[rows]
        trends[name] = mann_kendall_upward(block_medians(x)) \
            if len(x) >= MIN_TREND_SAMPLES else None
    tested = sum(1 for v in trends.values() if v is not None)
    per_alpha = alpha / max(tested, 1)
    report_adapters: dict[str, AdapterStarvation] = {}
    for name, s in summary.per_adapter.items():
        ratio = s.metrics.get("served_token_ratio")
        reasons = []
        if ratio is not None and ratio < threshold:
            reasons.append(f"served/offered tokens {_fmt_ratio(ratio)} < {threshold:g}")
        trend = trends.get(name)
        if trend is not None and trend.p_value < per_alpha:
            reasons.append(f"TTFT-from-arrival trends up (Mann-Kendall on {trend.n} block "
                           f"medians, S={trend.s}, p={trend.p_value:.2g} < {per_alpha:.2g} "
                           f"= {alpha:g}/{tested})")
        never = int(s.metrics.get("never_started_requests") or 0)
        if never:
            where = "by the horizon" if np.isfinite(ctx.horizon) else "at all"
            reasons.append(f"{never} of {s.metrics['offered_requests']} requests never "
                           f"started {where}")
        report_adapters[name] = AdapterStarvation(
            adapter=name, starving=bool(reasons), reasons=reasons, served_token_ratio=ratio,
            trend=trend, trend_alpha=per_alpha, never_started=never)
    ratio = summary.metrics.get("served_token_ratio")
    run_starving = ratio is not None and ratio < threshold
    if ratio is None:
        reason = "nothing offered"
    elif run_starving:
        reason = f"served/offered tokens {_fmt_ratio(ratio)} < {threshold:g}"
    else:
        reason = f"served/offered tokens {_fmt_ratio(ratio)} >= {threshold:g}"
    return StarvationReport(threshold=threshold, alpha=alpha, run_starving=run_starving,
                            run_reason=reason, served_token_ratio=ratio,
                            adapters=report_adapters)
