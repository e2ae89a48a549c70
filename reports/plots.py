"""Report figures as PNG bytes (matplotlib, Agg backend; nothing is shown on screen)."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from twinbench.reports.metrics import Summary

CDF_POINTS = 512  # quantiles drawn per curve: smooth, and cheap for millions of samples


def _figure(rows: int, cols: int, width: float = 11.0, height: float = 3.4):
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), squeeze=False)
    return plt, fig, axes


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _cdf_xy(values_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.linspace(0, 1, CDF_POINTS)
    return np.quantile(values_s, q) * 1000, q


def latency_cdfs(summaries: Sequence[Summary]) -> bytes:
    """TTFT, ITL and E2EL empirical CDFs, one curve per run."""
    plt, fig, axes = _figure(1, 3)
    for ax, (family, title) in zip(axes[0], (("ttft", "TTFT"), ("itl", "ITL"),
                                              ("e2el", "E2EL"))):
        drawn = False
        for s in summaries:
            v = s.samples.get(family)
            if v is None or len(v) == 0:
                continue
            x, y = _cdf_xy(v)
            ax.plot(x, y, label=s.label, lw=1.6)
            drawn = True
        ax.set_title(f"{title} CDF")
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("fraction of samples")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    return _png(plt, fig)


def common_buckets(summaries: Sequence[Summary]) -> None:
    """Give every run the same bucket width, so that their curves overlay."""
    from twinbench.reports.timeseries import nice_bucket
    spans = [float(s.series.t[-1] + s.series.bucket_s) for s in summaries if s.series is not None]
    if len(spans) < 2:
        return
    width = nice_bucket(max(spans))
    for s in summaries:
        if s.series is not None and s.series.bucket_s != width:
            s.rebucket(width)


def over_time(summaries: Sequence[Summary]) -> bytes:
    """Output throughput, and requests running / queued at the server, per time bucket."""
    common_buckets(summaries)
    plt, fig, axes = _figure(2, 1, height=3.0)
    ax_tp, ax_q = axes[0][0], axes[1][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(summaries):
        ts = s.series
        if ts is None:
            continue
        c = colors[i % len(colors)]
        ax_tp.step(ts.t, ts.output_tokens_per_s, where="post", color=c, label=s.label)
        ax_q.step(ts.t, ts.running, where="post", color=c, label=f"{s.label}: running")
        ax_q.step(ts.t, ts.queued_server, where="post", color=c, ls="--",
                  label=f"{s.label}: queued (sent, no token yet)")
    ax_tp.set_title("Output throughput over time")
    ax_tp.set_ylabel("tokens / s")
    ax_q.set_title("Requests running and queued over time (client view)")
    ax_q.set_ylabel("requests")
    for ax in (ax_tp, ax_q):
        ax.set_xlabel("run time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    return _png(plt, fig)


def server_metrics(summaries: Sequence[Summary]) -> bytes | None:
    """Scraped server gauges (running / waiting requests, KV usage) when the runs have them."""
    wanted = [n for n in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                          "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
              if any(s.series is not None and n in s.series.server for s in summaries)]
    if not wanted:
        return None
    plt, fig, axes = _figure(len(wanted), 1, height=2.6)
    for ax, name in zip(axes[:, 0], wanted):
        for s in summaries:
            if s.series is not None and name in s.series.server:
                t, v = s.series.server[name]
                ax.plot(t, v, label=s.label)
        ax.set_title(f"server: {name}")
        ax.set_xlabel("run time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(plt, fig)


def served_vs_offered(summary: Summary) -> bytes | None:
    """Per adapter: offered and served tokens side by side; starving adapters marked."""
    if not summary.per_adapter:
        return None
    names = list(summary.per_adapter)
    offered = np.array([summary.per_adapter[a].metrics["offered_tokens"] for a in names], float)
    served = np.array([summary.per_adapter[a].metrics["served_tokens"] for a in names], float)
    starving = [bool(summary.starvation and a in summary.starvation.adapters
                     and summary.starvation.adapters[a].starving) for a in names]
    plt, fig, axes = _figure(1, 1, width=max(6.0, 1.1 * len(names) + 3), height=3.8)
    ax = axes[0][0]
    x = np.arange(len(names))
    ax.bar(x - 0.2, offered, 0.4, label="offered tokens", color="#9bb7d4")
    colors = ["#d62728" if s else "#2a7f62" for s in starving]
    ax.bar(x + 0.2, served, 0.4, label="served tokens", color=colors)
    top = max(offered.max(initial=0), served.max(initial=0)) or 1.0
    for xi, s, sv, of in zip(x, starving, served, offered):
        ratio = sv / of if of else float("nan")
        ax.text(xi + 0.2, sv + 0.02 * top, f"{ratio:.2f}" + ("\nSTARVING" if s else ""),
                ha="center", va="bottom", fontsize=8, color="#d62728" if s else "black")
    ax.set_xticks(x, names, rotation=30 if len(names) > 6 else 0)
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("tokens (prompt + output)")
    ax.set_title(f"Served vs offered per adapter: {summary.label} (red = starving)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    return _png(plt, fig)
