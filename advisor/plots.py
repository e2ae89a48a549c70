"""Figures of the advisor: throughput/ITL vs batch, and the adapter search surface."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from twinbench.advisor.batch_rules import THROUGHPUT, BatchCurve
from twinbench.advisor.search import Evaluation, Point


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def plot_batch_curve(curve: BatchCurve, chosen: int | None, path: str, *, title: str,
                     knee: int | None = None, itl_keys: tuple[str, ...] = ("mean_itl_ms",
                                                                             "p99_itl_ms"),
                     itl_limit_ms: float | None = None) -> None:
    """Throughput (left axis) and ITL (right axis) vs max_num_seqs, log-scaled batch axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    b = curve.batch
    ax.plot(b, curve[THROUGHPUT], "o-", color="tab:blue", ms=3, label="output throughput")
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import ScalarFormatter
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("max_num_seqs (B)")
    ax.set_ylabel("output tokens/s", color="tab:blue")
    ax2 = ax.twinx()
    styles = iter(["s--", "^:", "v-."])
    for key in itl_keys:
        if key in curve.metrics:
            ax2.plot(b, curve[key], next(styles), color="tab:red", ms=3, label=key)
    if itl_limit_ms is not None:
        ax2.axhline(itl_limit_ms, color="tab:red", lw=0.8, alpha=0.5, label="ITL limit")
    ax2.set_ylabel("ITL (ms)", color="tab:red")
    if chosen is not None:
        ax.axvline(chosen, color="k", lw=1.2)
        ax.annotate(f"chosen B={chosen}", (chosen, float(np.interp(chosen, b, curve[THROUGHPUT]))),
                    xytext=(6, -14), textcoords="offset points", fontsize=9)
    if knee is not None:
        ax.axvline(knee, color="gray", lw=0.8, ls="--", label=f"Kneedle knee B={knee}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_replication(rows: list[dict], path: str, *, title: str) -> None:
    """Throughput per replica count (N instances sharing one GPU)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ns = [r["replicas"] for r in rows]
    ax.bar([str(n) for n in ns], [r.get(THROUGHPUT) or 0.0 for r in rows], color="tab:blue")
    ax.set_xlabel("replicas on one GPU")
    ax.set_ylabel("output tokens/s")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_search_surface(evaluations: Mapping[Point, Evaluation], best: Point | None, path: str,
                        *, title: str, x_label: str = "served adapters (max_cpu_loras)",
                        y_label: str = "GPU slots (max_loras)") -> None:
    """Every evaluated point: colour = throughput, ✕ = starving, ★ = optimum."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = list(evaluations.values())
    if pts:
        xs = np.array([e.point[0] for e in pts])
        ys = np.array([e.point[1] for e in pts])
        vs = np.array([e.value for e in pts])
        ok = np.array([e.feasible for e in pts])
        sc = ax.scatter(xs[ok], ys[ok], c=vs[ok], cmap="viridis", s=36, marker="s",
                        vmin=vs.min(), vmax=vs.max(), label="no starvation")
        ax.scatter(xs[~ok], ys[~ok], c=vs[~ok], cmap="viridis", s=36, marker="X",
                   vmin=vs.min(), vmax=vs.max(), edgecolors="red", linewidths=0.6,
                   label="starving")
        fig.colorbar(sc, ax=ax, label="output tokens/s")
    if best is not None:
        ax.scatter([best[0]], [best[1]], marker="*", s=260, c="none", edgecolors="red",
                   linewidths=1.5, label=f"optimum {best}")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
