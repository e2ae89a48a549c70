"""The `trace inspect --plot` figure: rate over time and token-length histograms."""
from __future__ import annotations

import numpy as np

from twinbench.traces.core import Trace, TraceError


def plot_trace(trace: Trace, path: str, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = trace.arrival_s - trace.arrival_s[0]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), constrained_layout=True)
    span = max(float(t[-1]), 1.0)
    seconds = np.bincount(np.floor(t).astype(np.int64))
    ax = axes[0]
    ax.plot(np.arange(len(seconds)), seconds, lw=0.5, color="0.6", label="per 1 s")
    if span >= 120:
        per_min = np.bincount(np.floor(t / 60).astype(np.int64)) / 60.0
        ax.step(np.arange(len(per_min)) * 60, per_min, where="post", color="C0", lw=1.5,
                label="per 60 s (mean)")
    ax.axhline((len(t) - 1) / span if len(t) > 1 else 0, color="C3", ls="--", lw=1,
               label="mean")
    ax.set_xlabel("time since first arrival (s)")
    ax.set_ylabel("requests / s")
    ax.set_title(title or str(trace.meta.get("source", "trace")), fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    for ax, col, name in ((axes[1], trace.prompt_tokens, "prompt tokens"),
                          (axes[2], trace.output_tokens, "output tokens")):
        lo, hi = max(int(col.min()), 1), max(int(col.max()), 2)
        bins = np.geomspace(lo, hi, 60) if hi / lo > 50 else np.linspace(lo, hi, 60)
        ax.hist(col, bins=bins, color="C2" if "prompt" in name else "C1")
        if hi / lo > 50:
            ax.set_xscale("log")
        ax.axvline(float(np.mean(col)), color="k", ls="--", lw=1,
                   label=f"mean {np.mean(col):,.0f}, p99 {np.percentile(col, 99):,.0f}")
        ax.set_xlabel(name)
        ax.set_ylabel("requests")
        ax.legend(fontsize=8)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as e:
        raise TraceError(f"cannot write plot: {e}", path) from None
    finally:
        plt.close(fig)
