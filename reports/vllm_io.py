"""vLLM `bench serve` result JSON: read one back as a run, and write our summary in its keys.

Reading keeps vLLM's per-request numbers as given (`ttfts`, `latencies`, pooled `itls`) and
rebuilds chunk times the way vLLM's peak histogram does (`start + ttft`, then each ITL added in
turn), so re-scoring reproduces vLLM's summary exactly. The duration cannot be rebuilt from the
arrays (it starts before the first scheduled delay), so it is taken from the file.
See tests/data/oracles/SCHEMA.md for the format.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from twinbench.reports.load import LoadedRun, read_json_object
from twinbench.reports.runfile import RunFileError
from twinbench.reports.stats import DEFAULT_PERCENTILES, stat_keys
from twinbench.reports.table import BASE, OK, RequestTable

DETAIL_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times",
               "errors")
VLLM_SUMMARY_KEYS = ("duration", "completed", "failed", "total_input_tokens",
                     "total_output_tokens", "request_throughput", "request_goodput",
                     "output_throughput", "total_token_throughput", "max_output_tokens_per_s",
                     "max_concurrent_requests")
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")


def read_vllm_result(path: str) -> LoadedRun:
    d = read_json_object(path)
    missing = [k for k in DETAIL_KEYS if k not in d]
    if missing:
        raise RunFileError(f"{path}: vLLM result without per-request arrays ({', '.join(missing)} "
                           "missing); rerun `vllm bench serve` with --save-detailed")
    n = len(d["ttfts"])
    if any(len(d[k]) != n for k in DETAIL_KEYS):
        raise RunFileError(f"{path}: per-request arrays of different lengths")
    if "duration" not in d:
        raise RunFileError(f"{path}: no 'duration' key (not a vLLM bench serve result)")
    table = vllm_table(d)
    summary_keys = {k: v for k, v in d.items()
                    if k in VLLM_SUMMARY_KEYS or k.endswith("_ms") or k == "rtfx"}
    header = {k: d.get(k) for k in ("date", "backend", "model_id", "tokenizer_id", "num_prompts",
                                    "request_rate", "burstiness", "max_concurrency", "label")}
    label = d.get("label") or path.rsplit("/", 1)[-1]
    return LoadedRun(label=label, table=table, source="vllm", path=path, header=header,
                     footer={"status": "complete"}, vllm=summary_keys)


def vllm_table(d: dict) -> RequestTable:
    n = len(d["ttfts"])
    ok = np.array([e == "" or e is None for e in d["errors"]], dtype=bool)
    start = np.asarray(d["start_times"], dtype=np.float64)
    ttft = np.where(ok, np.asarray(d["ttfts"], dtype=np.float64), np.nan)
    lat = np.where(ok, np.asarray(d["latencies"], dtype=np.float64), np.nan)
    queue = np.asarray(d.get("queue_times") or np.zeros(n), dtype=np.float64)
    capped = d.get("max_concurrency") is not None
    out_lens = np.asarray(d["output_lens"], dtype=np.int64)
    ok_lens = out_lens[ok]
    typical = int(np.bincount(ok_lens).argmax()) if ok_lens.size else 0
    chunk_lists, gap_lists, counts = [], [], np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(ok):
        itl = np.asarray(d["itls"][i], dtype=np.float64)
        seq = np.empty(len(itl) + 1)
        seq[0] = start[i] + ttft[i]
        seq[1:] = itl
        chunk_lists.append(np.cumsum(seq))  # sequential, as vLLM's `current_time += itl`
        gap_lists.append(itl)
        counts[i] = len(seq)
    chunk_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=chunk_start[1:])
    chunk_t = np.concatenate(chunk_lists) if chunk_lists else np.empty(0)
    ends = start + lat
    last_end = float(np.nanmax(ends)) if ok.any() else float(start.max(initial=0.0))
    duration = float(d["duration"])
    return RequestTable(
        ids=np.array([str(i) for i in range(n)], dtype=object), adapter_idx=np.zeros(n, dtype=np.int32), adapters=[BASE],
        warmup=np.zeros(n, dtype=bool),
        status=np.where(ok, OK, 1).astype(np.int8),  # 1 = "error"
        arrival_s=start - queue, client_queue_s=queue if capped else np.zeros(n),
        sent_s=start, first_token_s=start + ttft, end_s=ends, ttft_s=ttft, e2el_s=lat,
        prompt_tokens=np.asarray(d["input_lens"], dtype=np.int64),
        requested_output_tokens=np.where(ok, out_lens, typical),
        output_tokens=np.where(ok, out_lens, 0), chunk_start=chunk_start, chunk_t=chunk_t,
        chunk_n=None,
        gap_s=np.concatenate(gap_lists) if gap_lists else np.empty(0),
        timing="vllm-arrays", origin_s=last_end - duration, duration_s=duration,
        errors=[None if e == "" else e for e in d["errors"]],
    )


def to_vllm_result(summary: Any, run: LoadedRun | None = None,
                   percentiles=DEFAULT_PERCENTILES) -> dict:
    """Our summary in vLLM `bench serve` keys (n/a written as vLLM's 0), plus our additions.

    With `run`, the per-request arrays of `--save-detailed` are added (times in s, start times
    on the run clock).
    """
    m = summary.metrics
    hdr = (run.header if run is not None else {}) or {}
    out: dict[str, Any] = {
        "date": _dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "twinbench", "backend": "twinbench", "label": summary.label,
        "model_id": hdr.get("model_id"), "tokenizer_id": hdr.get("tokenizer_id"),
        "num_prompts": m.get("num_requests"), "request_rate": hdr.get("request_rate"),
        "burstiness": hdr.get("burstiness"), "max_concurrency": hdr.get("max_concurrency"),
    }
    for k in VLLM_SUMMARY_KEYS:
        v = m.get(k)
        if k == "request_goodput":
            out[k] = v
        elif k in ("max_output_tokens_per_s",):
            out[k] = 0.0 if v is None else v
        else:
            out[k] = 0 if v is None else v
    out["rtfx"] = 0.0
    for metric in LATENCY_METRICS:
        for key in stat_keys(metric, percentiles):
            out[key] = 0.0 if m.get(key) is None else m[key]
    # our additions, same naming pattern
    for k, v in m.items():
        if k not in out:
            out[k] = v
    out["twinbench_timing"] = summary.timing
    if run is not None:
        out.update(detailed_arrays(run.table))
    return out


def detailed_arrays(t: RequestTable) -> dict:
    ok = t.status == OK
    gaps = t.gaps()
    per_req = np.split(gaps, np.cumsum(t.gap_counts())[:-1]) if len(t) else []
    return {
        "input_lens": t.prompt_tokens.tolist(),
        "output_lens": np.where(ok, t.output_tokens, 0).tolist(),
        "ttfts": np.where(ok, t.ttft_s, 0.0).tolist(),
        "itls": [g.tolist() if ok[i] else [] for i, g in enumerate(per_req)],
        "latencies": np.where(ok, t.e2el_s, 0.0).tolist(),
        "start_times": np.where(np.isfinite(t.sent_s), t.sent_s - t.origin_s, 0.0).tolist(),
        "queue_times": t.client_queue_s.tolist(),
        "errors": ["" if ok[i] else (t.errors[i] if t.errors and t.errors[i] else
                                     "not successful") for i in range(len(t))],
    }
