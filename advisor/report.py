"""Plain-text reports of the advisor's answers (the CLI prints these)."""
from __future__ import annotations

import numpy as np

from twinbench.advisor.batch_rules import MEAN_ITL, THROUGHPUT
from twinbench.advisor.cli_common import fmt


def batch_text(advice, where: str, plot: str | None = None, json_path: str | None = None) -> str:
    sw = advice.sweep
    c = sw.curve
    lines = [f"advise batch on the {where}",
             f"load: {advice.load}",
             f"swept {sw.evaluated} values of max_num_seqs in {int(c.batch[0])}..{int(c.batch[-1])}",
             f"rule: {sw.choice.reason}"]
    b = sw.choice.batch
    peak_i = int(np.nanargmax(c[THROUGHPUT]))
    peak = float(c[THROUGHPUT][peak_i])
    if b is None:
        lines.append("recommended: none (no swept batch satisfies the rule)")
    else:
        i = int(np.flatnonzero(c.batch == b)[0])
        t = float(c[THROUGHPUT][i])
        lines.append(f"recommended: --max-num-seqs {b}   output throughput {t:,.0f} tok/s "
                     f"({100 * t / peak:.1f}% of the swept peak {peak:,.0f} at "
                     f"B={int(c.batch[peak_i])}; loss {100 * (1 - t / peak):.1f}%)")
        lat = [f"{k} {fmt(_at(c, k, i))}" for k in (MEAN_ITL, "p99_itl_ms", "p99_ttft_ms")
               if k in c.metrics]
        lines.append("  at that batch: " + ", ".join(lat) + " (ms)")
    if sw.knee.batch is not None:
        lines.append(f"Kneedle knee of T(B): B={sw.knee.batch}")
    if sw.linear_fit is not None:
        f = sw.linear_fit
        lines.append(f"linear fit of the mean ITL: {f.a_ms:.3f} + {f.b_ms:.4f}*B ms "
                     "(the closed-form knee of T(B) = B/(a+bB) applies if this fits)")
    kv = advice.kv
    if kv is not None:
        used = f"{kv.p99_blocks_used:,.0f} blocks"
        if kv.current_blocks:
            used += f" of {kv.current_blocks:,} ({100 * kv.p99_blocks_used / kv.current_blocks:.1f}%)"
        lines.append(f"KV: p99 in use at B={b}: {used}; + {100 * kv.margin:g}% margin -> "
                     f"{kv.num_gpu_blocks:,} blocks")
        lines.append("  " + "   ".join(kv.flags()))
        if kv.saved_fraction is not None:
            lines.append(f"  saves {100 * kv.saved_fraction:.1f}% of the KV pool")
        pre = (advice.points[b].info.get("stats") or {}).get("preemptions") if b else None
        if pre:
            lines.append(f"  note: {pre} preemptions at B={b}: this batch is KV-bound, keep "
                         "the pool (the KV usage above is capped at the pool)")
    if advice.replication:
        lines.append("replication what-if (N instances on one GPU, 1/N of its memory each, "
                     "max_num_seqs each as recommended, round-robin):")
        for row in advice.replication:
            if not row.get("fits"):
                lines.append(f"  N={row['replicas']}: does not fit ({row.get('note')})")
                continue
            gain = row.get("gain_vs_one_pct")
            lines.append(f"  N={row['replicas']}: {fmt(row.get(THROUGHPUT), ',.0f')} tok/s"
                         + ("" if gain is None else f" ({gain:+.1f}% vs one instance)")
                         + f", mean ITL {fmt(row.get(MEAN_ITL))} ms, KV blocks/replica "
                         f"{row.get('num_gpu_blocks_per_replica')}")
        best = max((r for r in advice.replication if r.get(THROUGHPUT)),
                   key=lambda r: r[THROUGHPUT], default=None)
        if best is not None and best["replicas"] > 1:
            lines.append(f"  -> {best['replicas']} replicas beat one instance by "
                         f"{best['gain_vs_one_pct']:.1f}% under the profile's bandwidth-share "
                         "assumption")
        elif best is not None:
            lines.append("  -> one instance is best")
    if plot:
        lines.append(f"plot: {plot}")
    if json_path:
        lines.append(f"details: {json_path}")
    return "\n".join(lines)


def _at(curve, key: str, i: int) -> float | None:
    v = float(curve[key][i])
    return None if np.isnan(v) else v
