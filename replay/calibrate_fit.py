"""Fit a profile from calibration rows (`twin.fit`, scipy), judge the fit, plot it, write it.

One fit of every row: decode rows are step times, prefill rows are TTFTs (the frontend
overhead F — request handling before the first step plus streaming after it — plus one
prefill step), F being one more non-negative term; absolute residuals first, then refined in
relative residuals. F becomes the profile's `frontend.input_ms`, so the twin delays each
request by it as the server does; prefill rows are then kept as step times (TTFT − F) for the
quality report and the plot.
"""
from __future__ import annotations

import datetime as _dt
import time
from typing import Any

import numpy as np

from twinbench.replay.calibrate import SEGMENT_STEPS
from twinbench.twin.fit import (FRONTEND, LORA_FACTOR_KEYS, TERMS, StepDesign,
                               fit_adapter_loads, fit_step_time)
from twinbench.twin.fit import predict_step_ms as predict
from twinbench.twin.profile import SCHEMA_VERSION, Profile

FIT_KEYS = ("step_ms", "decode_seqs", "kv_tokens", "prefill_tokens", "attention_pairs",
            "adapters", "rank_sum", "lora_server")


def quality(rows: list[dict], st: dict) -> dict[str, Any]:
    """R² and residual percentiles (absolute ms and relative %) of the fit, overall and by kind."""
    def one(sel: list[dict]) -> dict[str, Any]:
        y = np.array([r["step_ms"] for r in sel])
        yhat = predict(sel, st)
        res = yhat - y
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        rel = 100 * np.abs(res) / np.maximum(np.abs(y), 1e-9)
        return {"rows": len(sel),
                "r2": None if ss_tot == 0 else 1 - float(np.sum(res ** 2)) / ss_tot,
                "abs_residual_ms": {f"p{q}": float(np.percentile(np.abs(res), q))
                                    for q in (50, 90, 99)},
                "rel_residual_pct": {f"p{q}": float(np.percentile(rel, q)) for q in (50, 90, 99)}}

    out = {"all": one(rows)}
    for kind in sorted({r["kind"] for r in rows}):
        out[kind] = one([r for r in rows if r["kind"] == kind])
    return out


def _ttft_rows(prefill: list[dict]) -> list[dict]:
    """Prefill points as the model sees them in the fit: a TTFT = frontend + one step."""
    return [{"kind": r["kind"], **{k: r[k] for k in FIT_KEYS if k != "step_ms"},
             "step_ms": r["ttft_ms"], "ttft": True} for r in prefill]


def _fit_rows(rows: list[dict]) -> list[dict]:
    return [{"kind": r["kind"], **{k: r[k] for k in FIT_KEYS}} for r in rows]


def kind_weights(rows: list[dict]) -> np.ndarray:
    """One weight per row so that each kind of row (decode, prefill, LoRA decode, LoRA
    prefill) weighs the same in total: a plan yields hundreds of decode segments but a dozen
    prefill points, and the prefill ones decide TTFT."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    w = np.array([1.0 / counts[r["kind"]] for r in rows])
    return w * len(rows) / w.sum()


def fit_all(decode: list[dict], prefill: list[dict], loads: list[dict],
            lora_server: bool) -> dict[str, Any]:
    """Step-time, frontend and adapter-load coefficients plus the fit's quality and time."""
    t0 = time.perf_counter()
    fix = {"lora.base_only_on_lora_server": 1.0} if lora_server else {}
    if not decode:
        from twinbench.twin.fit import FitError
        raise FitError("calibration measured no decode steps (the budget was too small or "
                       "every request failed)")
    # The frontend (HTTP, tokenisation, streaming) is fitted with the step terms, prefill
    # points entering as TTFTs, so the decode rows pin the step's own intercept. (It used to
    # be the intercept of TTFT against prompt length, minus the step's: that swung with a few
    # long prompts' curvature, 14.7 ms on one calibration and 26.2 ms on another of the same
    # server, left the 16-token prefill step at ~0 ms and wrecked the relative refit.)
    fit_rows = _fit_rows(decode) + _ttft_rows(prefill)
    weights = kind_weights(decode + prefill)
    st = fit_step_time(fit_rows, fix=fix, weights=weights)
    report = st.pop("fit_report")
    rel = refine_relative(fit_rows, st, fix, weights)
    report["absolute_fit_quality"] = quality(fit_rows, st)["all"]  # with its own frontend
    f_ms = float(rel.pop(FRONTEND, 0.0))
    st.pop(FRONTEND, None)
    for r in prefill:  # the step alone, for the quality report and the plot
        r["step_ms"] = max(1e-3, r["ttft_ms"] - f_ms)
    rows = decode + prefill
    report["refined"] = "relative residuals (twin.fit minimises absolute ms, which lets the " \
                        "slowest rows dominate when steps span 10-1000 ms); each kind of row " \
                        "weighs the same in total; prefill points enter as TTFTs with the " \
                        "frontend as one more term"
    adapter_load = _fit_loads(loads)
    return {"step_time": rel, "frontend_ms": f_ms, "adapter_load": adapter_load,
            "step_jitter": estimate_jitter(decode, rel),
            "fit_report": report, "quality": quality(rows, rel), "rows": rows,
            "fit_s": time.perf_counter() - t0}



def refine_relative(rows: list[dict], st: dict, fix: dict,
                    weights: np.ndarray | None = None) -> dict:
    """Re-fit from `twin.fit`'s solution minimising relative residuals (pred − y) / y.

    Same model and bounds (coefficients >= 0); terms `twin.fit` pinned (no variation in the
    data, or `fix`) stay pinned, so the refinement never invents a term it cannot see.
    """
    from scipy.optimize import least_squares

    y = np.array([r["step_ms"] for r in rows], dtype=np.float64)
    start = [st.get(k, 0.0) for k in TERMS] + [st["lora_factor"][k] for k in LORA_FACTOR_KEYS]
    design = StepDesign(rows)
    columns = design.term_columns()
    pinned = {j for j in range(1, len(TERMS)) if not columns[:, j].any()}
    has_lora = any(r["adapters"] for r in rows)
    lora_idx = {k: len(TERMS) + i for i, k in enumerate(LORA_FACTOR_KEYS)}
    if not has_lora:
        pinned |= {lora_idx["base"], lora_idx["per_adapter"], lora_idx["per_rank_unit"]}
    if not any(r["rank_sum"] for r in rows):
        pinned.add(lora_idx["per_rank_unit"])
    for name in fix:
        if name.startswith("lora."):
            pinned.add(lora_idx[name.split(".", 1)[1]])
    free = [i for i in range(len(start)) if i not in pinned]

    def unpack(theta: np.ndarray) -> dict:
        vals = list(start)
        for i, v in zip(free, theta):
            vals[i] = float(v)
        out = {k: vals[j] for j, k in enumerate(TERMS)}
        out["lora_factor"] = {k: vals[lora_idx[k]] for k in LORA_FACTOR_KEYS}
        return out

    # parameter scales: at least a term's typical size, so a start at 0 is not frozen there
    typical = list(float(np.mean(y)) * 1e-2 / np.maximum(columns.max(axis=0), 1e-30))
    typical += [0.01] * len(LORA_FACTOR_KEYS)
    scale = np.array([max(abs(start[i]), typical[i]) for i in free])
    x0 = np.array([start[i] for i in free]) / scale
    y = np.maximum(y, 1e-3)
    sqrt_w = np.ones(len(rows)) if weights is None else np.sqrt(np.asarray(weights, float))
    res = least_squares(lambda th: sqrt_w * (design.predict(unpack(th * scale)) - y) / y, x0,
                        bounds=(0.0, np.inf), method="trf", x_scale="jac")
    return unpack(res.x * scale)


MIN_JITTER_ROWS = 20  # decode segments needed to estimate the speed variation at all


def estimate_jitter(rows: list[dict], st: dict) -> dict[str, Any] | None:
    """The server's speed variation (the profile's `step_jitter`) from decode segments.

    Each decode segment's log(measured / fitted) is taken relative to the median of its own
    point (same batch, adapters and plan point), so what the model misfits for a whole point
    is left out and what remains is how the same step varied over time. `sigma` is that
    spread (1.4826 × median absolute deviation: robust to the odd interfered segment). The
    window follows from how alike consecutive segments of one batch are: for a speed that is
    constant within windows of W (at random phase), the means of two adjacent segments of D
    (8 steps, D ≪ W) correlate as ρ = (1 − D/W) / (1 − D/3W) ≈ 1 − 2D/3W, so
    W = 2D / 3(1 − ρ), kept between D and 10 s. None when there are too few segments.
    """
    dec = [r for r in rows if r["kind"] in ("decode", "lora decode") and r["step_ms"] > 0]
    if len(dec) < MIN_JITTER_ROWS:
        return None
    res = np.log(np.array([r["step_ms"] for r in dec]) / np.maximum(predict(dec, st), 1e-9))
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(dec):
        key = (r["kind"], r.get("point"), r["decode_seqs"], r["adapters"], r["rank_sum"])
        groups.setdefault(key, []).append(i)
    centred = np.empty_like(res)
    for idx in groups.values():
        centred[idx] = res[idx] - np.median(res[idx])
    sigma = float(1.4826 * np.median(np.abs(centred)))
    first, second, span = [], [], []
    for idx in groups.values():
        for i, j in zip(idx[:-1], idx[1:]):
            if dec[i].get("repeat") == dec[j].get("repeat"):
                first.append(centred[i])
                second.append(centred[j])
                span.append(dec[i].get("steps", SEGMENT_STEPS) * dec[i]["step_ms"])
    if len(first) < MIN_JITTER_ROWS or not np.std(first) or not np.std(second):
        return None
    rho = float(np.corrcoef(first, second)[0, 1])
    seg_ms = float(np.median(span))
    window = min(10_000.0, max(seg_ms, 2.0 * seg_ms / (3.0 * max(1e-9, 1.0 - rho))))
    return {"sigma": round(sigma, 4), "window_ms": round(window, 1), "seed": 0,
            "estimate": {"segments": len(dec), "segment_ms": round(seg_ms, 1),
                         "lag1_correlation": round(rho, 3),
                         "method": "decode segments relative to their point's median; "
                                   "window from consecutive segments' correlation"}}


def _fit_loads(loads: list[dict]) -> dict[str, float]:
    """cpu_to_gpu from evict-then-use; disk_to_cpu from fresh names minus the cpu_to_gpu part."""
    zero = {"disk_to_cpu_ms": 0.0, "disk_to_cpu_per_rank_ms": 0.0, "cpu_to_gpu_ms": 0.0,
            "cpu_to_gpu_per_rank_ms": 0.0}
    gpu = [dict(r) for r in loads if r["kind"] == "cpu_to_gpu"]
    fresh = [dict(r) for r in loads if r["kind"] == "disk_to_cpu+cpu_to_gpu"]
    out = dict(zero)
    if gpu:
        out.update(_linear_or_mean(gpu, "cpu_to_gpu"))
    if fresh:
        c2g = out["cpu_to_gpu_ms"]
        rows = [{"kind": "disk_to_cpu", "rank": r["rank"],
                 "load_ms": max(0.0, r["load_ms"] - c2g - out["cpu_to_gpu_per_rank_ms"] * r["rank"])}
                for r in fresh]
        out.update(_linear_or_mean(rows, "disk_to_cpu"))
    return out


def _linear_or_mean(rows: list[dict], kind: str) -> dict[str, float]:
    ranks = {r["rank"] for r in rows}
    if len(ranks) >= 2:
        return fit_adapter_loads([{**r, "kind": kind} for r in rows])
    return {f"{kind}_ms": float(np.median([r["load_ms"] for r in rows])),
            f"{kind}_per_rank_ms": 0.0}


def build_profile(name: str, target: Any, server_flags: dict[str, Any], fit: dict[str, Any],
                  provenance: dict[str, Any]) -> Profile:
    """A schema-1 profile of the measured server (memory facts reproduce its KV capacity)."""
    cc = target.cache_config or {}
    block = int(cc.get("block_size") or server_flags.get("block_size") or 16)
    blocks = cc.get("num_gpu_blocks") or server_flags.get("num_gpu_blocks")
    kv_bytes = _kv_bytes_per_token(cc)
    kv_tokens = int(blocks) * block if blocks else None
    st = fit["step_time"]
    decode_base = [r["step_ms"] for r in fit["rows"]
                   if r["kind"] == "decode" and r["decode_seqs"] == 1]
    data = {
        "schema_version": SCHEMA_VERSION, "name": name,
        "description": f"{target.model} served by vLLM {target.version or '?'} at "
                       f"{target.base_url}, calibrated by twinbench calibrate",
        "model": {"name": target.model, "max_model_len": int(target.max_model_len)},
        "defaults": {k: v for k, v in server_flags.items() if v is not None and k in
                     ("max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill",
                      "long_prefill_token_threshold", "block_size", "enable_prefix_caching",
                      "max_loras", "max_cpu_loras", "max_lora_rank")},
        "memory": {
            "device": "the calibrated server (KV capacity as it reported it)",
            "device_bytes": float((kv_tokens or 0) * kv_bytes), "gpu_memory_utilization": 1.0,
            "weights_bytes": 0.0, "non_kv_reserve_bytes": 0.0,
            "kv_bytes_per_token": kv_bytes, "lora_bytes_per_slot_rank": 0.0,
            "measured_kv_tokens": kv_tokens},
        "step_time": st,
        "scheduler": {"base_ms": 0.0, "per_running_ms": 0.0, "per_waiting_ms": 0.0},
        "adapter_load": fit["adapter_load"],
        "frontend": {"input_ms": fit["frontend_ms"], "output_ms": 0.0},
        "baseline": {"step_ms": float(np.median(decode_base)) if decode_base
                     else float(st["base_ms"]),
                     "first_token_ms": fit["frontend_ms"] + float(st["base_ms"]),
                     "note": "naive baseline (twin/baseline.py): one constant step per token, "
                             "measured median decode step of a single request"},
        "replica_bandwidth_share": 1.0,
        **({"step_jitter": fit["step_jitter"]} if fit.get("step_jitter") else {}),
        "provenance": {
            "sources": [f"twinbench calibrate: black-box profiling plan through the real "
                        f"backend against {target.base_url} ({target.model}, vLLM "
                        f"{target.version or '?'})"],
            "calibrated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "server": {"base_url": target.base_url, "vllm_version": target.version,
                       "model": target.model, "flags": server_flags,
                       "cache_config": {k: v for k, v in cc.items() if k in
                                        ("block_size", "num_gpu_blocks", "kv_cache_size_tokens",
                                         "kv_cache_memory_bytes", "enable_prefix_caching",
                                         "gpu_memory_utilization")},
                       "max_loras": target.max_loras, "adapters": target.adapters,
                       "runtime_lora_loading": target.runtime_loading},
            "fit": {"report": fit["fit_report"], "quality": fit["quality"],
                    "frontend_ms": fit["frontend_ms"], "fit_s": fit["fit_s"]},
            "estimates": {
                "scheduler": "not separable black-box: scheduler time is inside the measured "
                             "step times (base_ms), so the scheduler terms are 0",
                "frontend.input_ms": "fitted with the step terms, prefill points entering as "
                                     "TTFTs (HTTP, tokenisation, streaming)",
                "memory": "only the KV capacity the server reported is known; device and "
                          "weights bytes are not, so device_bytes = KV tokens x bytes/token"},
            **provenance},
    }
    return Profile.from_json(data, source=None)


def _kv_bytes_per_token(cc: dict) -> float:
    try:
        return float(cc["kv_cache_memory_bytes"]) / float(cc["kv_cache_size_tokens"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 1.0  # unknown: capacity is then counted in tokens directly


def plot_fit(rows: list[dict], st: dict, path: str, title: str) -> None:
    """Measured vs fitted step times (left) and decode step vs batch size (right)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    yhat = predict(rows, st)
    kinds = sorted({r["kind"] for r in rows})
    for kind in kinds:
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        ax1.scatter([rows[i]["step_ms"] for i in idx], yhat[idx], s=14, label=kind, alpha=0.8)
    lo = max(1e-2, min(min(r["step_ms"] for r in rows), float(yhat.min())) * 0.8)
    hi = max(max(r["step_ms"] for r in rows), float(yhat.max())) * 1.2
    ax1.plot([lo, hi], [lo, hi], "k--", lw=1, label="fitted = measured")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("measured step (ms)")
    ax1.set_ylabel("fitted step (ms)")
    ax1.set_title("Step time: measured vs fitted")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=8)
    for kind in ("decode", "lora decode"):
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        ctx = np.array([r["kv_tokens"] / r["decode_seqs"] for r in sel])
        ax2.scatter([r["decode_seqs"] for r in sel], [r["step_ms"] for r in sel], s=14,
                    c=ctx, cmap="viridis", marker="o" if kind == "decode" else "^",
                    label=f"{kind} (colour: context/seq)")
        for b in sorted({r["decode_seqs"] for r in sel}):
            near = [r for r in sel if r["decode_seqs"] == b]
            ax2.plot([b], [float(np.median(predict(near, st)))], "kx")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("decoding sequences in the step (B)")
    ax2.set_ylabel("step (ms)")
    ax2.set_title("Decode step vs batch size (x = fitted median)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
