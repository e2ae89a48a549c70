"""`summarize()`: every metric of DESIGN §3 from a run's records, vectorised over a `RequestTable`.

Definitions follow vLLM `bench serve` (vllm/benchmarks/serve.py `calculate_metrics`, v0.32)
so that our figures equal vLLM's bit for bit on the same per-request data; the names are vLLM's
keys, and our additions follow the same pattern. `DEFINITIONS` says what each figure is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from twinbench.reports.load import LoadedRun, as_loaded
from twinbench.reports.sketch import QuantileSketch
from twinbench.reports.stats import (DEFAULT_PERCENTILES, describe_ms, describe_sketch_ms,
                                     moments)
from twinbench.reports.table import BASE, OK, RequestTable
from twinbench.reports.records import STATUSES

MS_PER_S = 1000  # vLLM divides SLOs given in ms by this constant
ORDERED_SAMPLES = 20000  # time-ordered ITL subsample kept for resampling (regression gate)
BLOCK = 1 << 20  # elements per block when streaming over chunk arrays (8 MB, cache-sized)
GAP_BLOCK = 1 << 20  # chunks per block when computing pooled gaps (temporaries stay in cache)

DEFINITIONS = MappingProxyType({
    "ttft": "TTFT = first_token_s - sent_s, successful requests (vLLM ttft)",
    "tpot": "TPOT = (E2EL - TTFT) / (output_tokens - 1), successful requests with "
            "output_tokens > 1 (vLLM tpot)",
    "itl": "ITL = gaps between consecutive token-bearing chunks, pooled over successful "
           "requests (vLLM itl)",
    "itl_sketch": "ITL from the run's quantile sketch (relative error <= its accuracy; "
                  "quantiles are lower-rank estimates, mean and std exact)",
    "e2el": "E2EL = end_s (last token-bearing chunk) - sent_s, successful requests (vLLM e2el)",
    "ttft_from_arrival": "first_token_s - arrival_s (scheduled), successful requests; a slow "
                         "client cannot hide latency here",
    "dispatch_lag": "sent_s - arrival_s - client_queue_s, every sent request (client health)",
    "client_queue_time": "client_queue_s: wait for a client concurrency slot, every sent request",
    "duration": "run origin (0) to the last completion, s (vLLM duration); with a window "
                "[w0, w1): w1 - w0 (w1 defaults to the last completion)",
    "request_throughput": "completed / duration (vLLM); window: completions in the window / "
                          "window length",
    "output_throughput": "total_output_tokens / duration (vLLM); window: tokens of chunks timed "
                         "in the window / window length",
    "total_token_throughput": "(total_input_tokens + total_output_tokens) / duration (vLLM); "
                              "window: prompts first-served in the window + output tokens in it",
    "request_goodput": "successful requests meeting every SLO (value <= SLO; TPOT 0 when "
                       "output_tokens <= 1) / duration (vLLM goodput)",
    "max_output_tokens_per_s": "peak of the per-second histogram of chunk times from the first "
                               "successful send (counts chunks, vLLM)",
    "max_concurrent_requests": "peak of the per-second histogram of active successful requests "
                               "(vLLM; not an instantaneous concurrency)",
    "completed": "successful requests (status ok)",
    "failed": "requests that did not succeed (error, timeout, cancelled, unfinished)",
    "total_input_tokens": "prompt tokens of successful requests",
    "total_output_tokens": "output tokens (server usage) of successful requests",
    "offered": "requests arriving in the window (whole run without one) and dispatched "
               "(not after --duration), their prompt + requested output tokens",
    "served": "successful requests done by the window end; tokens: prompts of requests "
              "started and output tokens streamed by the window end (prompt + output)",
    "served_token_ratio": "served_tokens / offered_tokens",
    "never_started_requests": "offered requests with no first token by the horizon (last "
                              "arrival + drain limit)",
})


def _family(key: str) -> str:
    for fam in ("ttft_from_arrival", "dispatch_lag", "client_queue_time", "ttft", "tpot",
                "itl", "e2el"):
        if key.endswith(f"_{fam}_ms"):
            return fam
    for prefix in ("offered", "served_token_ratio", "served"):
        if key.startswith(prefix):
            return prefix
    return key


@dataclass
class Summary:
    """Metrics of one run (or one adapter of it) under vLLM key names, with definitions."""

    label: str
    metrics: dict[str, Any]
    definitions: dict[str, str]
    timing: str                                   # where token timing came from
    per_adapter: dict[str, "Summary"] = field(default_factory=dict)
    starvation: Any = None                        # starvation.StarvationReport
    series: Any = None                            # timeseries.TimeSeries
    partial_reason: str | None = None
    window: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    source: str = "records"
    table: RequestTable | None = field(default=None, repr=False)       # for re-bucketing
    server_samples: list = field(default_factory=list, repr=False)

    def rebucket(self, bucket_s: float, end_s: float | None = None) -> None:
        """Rebuild the time series with another bucket width (to overlay several runs)."""
        from twinbench.reports.timeseries import build_series
        if self.table is not None:
            self.series = build_series(self.table, self.server_samples, bucket_s=bucket_s,
                                       end_s=end_s or self.metrics.get("duration") or 0.0)

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.metrics.get(key, default)

    @property
    def partial(self) -> bool:
        return self.partial_reason is not None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"label": self.label, "source": self.source,
                             "timing": self.timing, **self.metrics}
        if self.window is not None:
            d["window_s"] = list(self.window)
        if self.partial_reason is not None:
            d["partial"] = self.partial_reason
        if self.notes:
            d["notes"] = list(self.notes)
        if self.per_adapter:
            d["per_adapter"] = {k: s.to_dict() for k, s in self.per_adapter.items()}
        if self.starvation is not None:
            d["starvation"] = self.starvation.to_dict()
        if self.series is not None:
            d["time_series"] = self.series.to_dict()
        d["definitions"] = dict(self.definitions)
        return d


@dataclass
class _Context:
    """What every group (the run, or one adapter) shares."""

    table: RequestTable          # warm-up excluded, rows grouped by adapter
    w0: float                    # window on the table clock; -inf..inf without one
    w1: float
    windowed: bool
    duration: float | None
    percentiles: tuple
    slos: dict[str, float] | None
    horizon: float
    offer_end: float = math.inf  # rows arriving at or after it were never dispatched
    # (`--duration`): they were not offered to the server, so offered load and starvation
    # leave them out (they stay in the counts as `cancelled`)


@dataclass
class _Group:
    """One group's rows (a view of the table) and its pooled ITL gaps."""

    t: RequestTable
    gaps: np.ndarray
    sketch: QuantileSketch | None = None
    gaps_owned: bool = False     # the gaps may be reordered in place (no copy of 10^8 floats)
    itl: np.ndarray | None = None          # precomputed pooled ITL of the successful requests
    itl_ordered: np.ndarray | None = None  # and its time-ordered subsample
    itl_moments: tuple[float, float] | None = None  # and its (mean, std), in table order


def summarize(run_or_records: Any, *, window: tuple[float, float | None] | None = None,
              slos: dict[str, float] | None = None, percentiles=DEFAULT_PERCENTILES,
              starvation_threshold: float = 0.9, alpha: float = 0.01,
              drain_limit_s: float | None = None, label: str | None = None,
              time_series: bool = True, bucket_s: float | None = None) -> Summary:
    """Summarise a run. `window` = (w0, w1) run-clock seconds, w1 None = to the end.

    `slos` in ms, keys `ttft`, `tpot`, `e2el` (vLLM `--goodput`). Warm-up records are left
    out. Starvation uses `starvation_threshold` (served/offered tokens), `alpha` (Mann-Kendall,
    Bonferroni over adapters) and the horizon last arrival + `drain_limit_s`.
    """
    from twinbench.reports.starvation import assess_starvation
    from twinbench.reports.timeseries import build_series

    loaded = as_loaded(run_or_records, label)
    percentiles = tuple(percentiles)
    _check_slos(slos)
    ctx, notes = _context(loaded, window, slos, percentiles, drain_limit_s)
    t = ctx.table
    sketches = _sketch_index(loaded.sketches, t.adapters) if t.timing == "sketch" else {}
    all_gaps = pooled_gaps(t)
    # gaps computed here (not a source's own exact array) may be partitioned in place: each
    # adapter within its own contiguous region first, then the whole run, last
    owned = t.gap_s is None
    gap_start = np.concatenate(([0], np.cumsum(t.gap_counts())))
    # the run's ITL (and its ordered subsample) are taken before any adapter reorders its region
    run_ok = _window_rows(ctx, t) & (t.status == OK)
    run_itl = all_gaps if run_ok.all() else all_gaps[np.repeat(run_ok, t.gap_counts())]
    # ...and so are its mean and std: np.mean's pairwise sum depends on the element order
    run_group = _Group(t, all_gaps, sketches.get("*"), gaps_owned=owned, itl=run_itl,
                       itl_ordered=_ordered_subsample(run_itl),
                       itl_moments=moments(run_itl) if len(run_itl) else None)
    per_adapter: dict[str, Summary] = {}
    for name, lo, hi in t.groups():
        group = _Group(t.slice(lo, hi), all_gaps[gap_start[lo]:gap_start[hi]],
                       sketches.get(name), gaps_owned=owned)
        m, s = _group_metrics(ctx, group)
        s["itl"] = s["itl_ordered"]  # its region of the run's gaps is reordered later
        per_adapter[name] = Summary(label=name, metrics=m, definitions=_definitions(m, t.timing),
                                    timing=t.timing, samples=s, source=loaded.source)
    metrics, samples = _group_metrics(ctx, run_group)
    timing = t.timing
    if timing == "none":
        notes.append("records carry no token timestamps and no sketch: ITL and the chunk "
                     "histogram are n/a; window token counts are interpolated")
    elif timing == "sketch":
        notes.append("ITL from the run's quantile sketches; window token counts interpolated")
    summary = Summary(label=loaded.label, metrics=metrics,
                      definitions=_definitions(metrics, timing), timing=timing,
                      per_adapter=per_adapter, partial_reason=loaded.partial_reason,
                      window=None if window is None else (ctx.w0 - t.origin_s,
                                                          ctx.w1 - t.origin_s),
                      notes=notes, samples=samples, source=loaded.source)
    summary.starvation = assess_starvation(ctx, summary, threshold=starvation_threshold,
                                           alpha=alpha)
    summary.table, summary.server_samples = t, loaded.samples
    if time_series:
        summary.series = build_series(t, loaded.samples, bucket_s=bucket_s,
                                      end_s=(ctx.duration or 0.0))
    return summary


def _check_slos(slos: dict[str, float] | None) -> None:
    from twinbench.traces.errors import TwinbenchError

    for k, v in (slos or {}).items():
        if k not in ("ttft", "tpot", "e2el"):
            raise TwinbenchError(f"unknown SLO metric {k!r} (use ttft, tpot, e2el)")
        if not (isinstance(v, (int, float)) and v >= 0):
            raise TwinbenchError(f"SLO {k} must be a non-negative number of ms, got {v!r}")


def _context(loaded: LoadedRun, window, slos, percentiles, drain_limit_s
             ) -> tuple[_Context, list[str]]:
    notes: list[str] = []
    full = loaded.table
    n_warm = int(full.warmup.sum())
    t = full.select(~full.warmup) if n_warm else full
    if n_warm:
        notes.append(f"{n_warm} warm-up requests excluded")
    o = t.origin_s
    ends = t.end_s[np.isfinite(t.end_s)]
    last_end = float(ends.max()) if ends.size else None
    if window is None:
        w0, w1, windowed = -math.inf, math.inf, False
        if t.duration_s is not None:
            duration = t.duration_s
        else:
            duration = None if last_end is None else last_end - o
    else:
        w0 = float(window[0]) + o
        w1 = math.inf if window[1] is None else float(window[1]) + o
        windowed = True
        stop = w1 if math.isfinite(w1) else last_end
        duration = None if stop is None else stop - w0
    if duration is not None and duration <= 0:
        duration = None
    arrivals = t.arrival_s
    offer_end = math.inf
    options = (loaded.header or {}).get("options")
    dispatch_s = options.get("duration_s") if isinstance(options, dict) else None
    if isinstance(dispatch_s, (int, float)) and math.isfinite(dispatch_s):
        offer_end = float(dispatch_s) + o
        cut = int((arrivals >= offer_end).sum())
        if cut:
            notes.append(f"{cut} requests arriving after --duration {dispatch_s:g} s were "
                         "never dispatched: not counted as offered")
            arrivals = arrivals[arrivals < offer_end]
    horizon = math.inf
    if drain_limit_s is not None and len(arrivals):
        horizon = float(arrivals.max()) + float(drain_limit_s)
    return _Context(table=t, w0=w0, w1=w1, windowed=windowed, duration=duration,
                    percentiles=percentiles, slos=slos, horizon=horizon,
                    offer_end=offer_end), notes


def _sketch_index(sketches: dict | None, adapters: list[str]) -> dict[str, QuantileSketch]:
    """footer["sketches"] -> {adapter key or "*": ITL sketch}; base-model aliases mapped."""
    out: dict[str, QuantileSketch] = {}
    for key, fams in (sketches or {}).items():
        if not isinstance(fams, dict) or "itl" not in fams:
            continue
        name = key
        if key not in adapters and key in ("", "null", "None", "base", "__base__", BASE):
            name = BASE
        out[name] = QuantileSketch.from_json(fams["itl"])
    if "*" not in out and out:
        merged = None
        for s in out.values():
            merged = QuantileSketch.from_json(s.to_json()) if merged is None else merged.merge(s)
        out["*"] = merged
    return out


def _div(a: float, b: float | None) -> float | None:
    return None if b is None or b == 0 else a / b


def _group_metrics(ctx: _Context, g: _Group) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    t = g.t
    in_window = _window_rows(ctx, t)
    is_ok = t.status == OK
    ok = in_window & is_ok
    m: dict[str, Any] = {}
    n_req = int(in_window.sum())
    completed = int(ok.sum())
    m["num_requests"] = n_req
    m["completed"] = completed
    m["failed"] = n_req - completed
    for code, name in enumerate(STATUSES):
        if name != "ok":
            m[f"{name}_requests"] = int((in_window & (t.status == code)).sum())
    out_tok = t.output_tokens[ok]
    m["total_input_tokens"] = int(t.prompt_tokens[ok].sum())
    m["total_output_tokens"] = int(out_tok.sum())
    m["duration"] = ctx.duration
    ttft, e2el = t.ttft_s[ok], t.e2el_s[ok]
    # vLLM: tpot = (latency - ttft) / (output_len - 1) when output_len > 1, else 0 for goodput
    multi = out_tok > 1
    tpot_all = np.zeros(len(out_tok))
    tpot_all[multi] = (e2el[multi] - ttft[multi]) / (out_tok[multi] - 1)
    tpot = tpot_all[multi]
    all_ok = completed == len(t)
    if g.itl is not None:
        itl, itl_ordered = g.itl, g.itl_ordered
    else:
        itl = g.gaps if all_ok else g.gaps[np.repeat(ok, t.gap_counts())]
        # time-ordered subsample for resampling, before the order statistics reorder `itl`
        itl_ordered = _ordered_subsample(itl)
    _throughput(ctx, t, m, is_ok, ok, ttft, tpot_all, e2el)
    m.update(_peaks(t, ok, all_ok))
    m.update(describe_ms("ttft", ttft, ctx.percentiles, owned=True))
    m.update(describe_ms("tpot", tpot, ctx.percentiles, owned=True))
    if t.timing == "sketch" and g.sketch is not None:
        m.update(describe_sketch_ms("itl", g.sketch, ctx.percentiles))
    else:
        m.update(describe_ms("itl", itl, ctx.percentiles,
                             owned=g.gaps_owned or itl is not g.gaps, moments=g.itl_moments))
    m.update(describe_ms("e2el", e2el, ctx.percentiles, owned=True))
    from_arrival = (t.first_token_s - t.arrival_s)[ok]
    m.update(describe_ms("ttft_from_arrival", from_arrival, ctx.percentiles, owned=True))
    sent = in_window & np.isfinite(t.sent_s)
    lag = (t.sent_s - t.arrival_s - t.client_queue_s)[sent]
    m.update(describe_ms("dispatch_lag", lag, ctx.percentiles, owned=True))
    m.update(describe_ms("client_queue_time", t.client_queue_s[sent], ctx.percentiles,
                         owned=True))
    m.update(_offered_served(ctx, t, in_window, is_ok))
    ok_ids = t.ids[ok]
    # the order statistics above partitioned ttft, e2el... (copies) and maybe `itl` in place;
    # per-request samples are taken afresh in table order, ITL as a multiset plus an ordered
    # subsample
    samples = {"ok_ids": ok_ids, "tpot_ids": ok_ids[multi], "lag_ids": t.ids[sent],
               "ttft": t.ttft_s[ok], "tpot": _tpot_in_order(t, ok), "itl": itl,
               "itl_ordered": itl_ordered,
               "e2el": t.e2el_s[ok], "ttft_from_arrival": (t.first_token_s - t.arrival_s)[ok],
               "dispatch_lag": (t.sent_s - t.arrival_s - t.client_queue_s)[sent],
               "arrival": t.arrival_s[ok] - t.origin_s, "output_tokens": out_tok,
               "input_tokens": t.prompt_tokens[ok]}
    return m, samples


def pooled_gaps(t: RequestTable) -> np.ndarray:
    """Pooled ITL gaps in s (request order, chunk order within a request), equal to
    `t.gaps()`, computed in one pass into one array of the exact size: a block of chunk-time
    differences at a time, the differences that straddle two requests left out. Saves the
    full-size difference array and mask that a plain diff-then-select needs (10^8 chunks:
    0.9 GB of fresh memory, whose first touch costs seconds of system time on a VM)."""
    if t.gap_s is not None:
        return t.gap_s
    ct, starts = t.chunk_t, t.chunk_start
    n_chunks = len(ct)
    counts = np.diff(starts)
    # d[i] = ct[i+1] - ct[i] straddles two requests when chunk i+1 opens a request
    opens = starts[:-1][(counts > 0) & (starts[:-1] > 0)]
    out = np.empty(max(n_chunks - 1 - len(opens), 0), dtype=np.float64)
    written = 0
    for lo in range(0, n_chunks - 1, GAP_BLOCK):
        hi = min(lo + GAP_BLOCK, n_chunks - 1)
        d = ct[lo + 1:hi + 1] - ct[lo:hi]
        a, b = np.searchsorted(opens, [lo + 1, hi + 1])
        if b > a:
            d = np.delete(d, opens[a:b] - 1 - lo)
        out[written:written + len(d)] = d
        written += len(d)
    return out


def _window_rows(ctx: _Context, t: RequestTable) -> np.ndarray:
    if not ctx.windowed:
        return np.ones(len(t), dtype=bool)
    return (t.arrival_s >= ctx.w0) & (t.arrival_s < ctx.w1)


def _ordered_subsample(x: np.ndarray) -> np.ndarray:
    if len(x) <= ORDERED_SAMPLES:
        return x.copy()
    return x[np.linspace(0, len(x) - 1, ORDERED_SAMPLES).astype(np.int64)]


def _tpot_in_order(t: RequestTable, ok: np.ndarray) -> np.ndarray:
    out_tok = t.output_tokens[ok]
    multi = out_tok > 1
    return (t.e2el_s[ok][multi] - t.ttft_s[ok][multi]) / (out_tok[multi] - 1)


def _tokens_in(t: RequestTable, rows: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Output tokens per request streamed in [lo, hi): from chunks, else interpolated."""
    if len(t.chunk_t):
        cm = t.chunk_mask(rows) & (t.chunk_t >= lo) & (t.chunk_t < hi)
        per_row = t.tokens_per_row(cm)
    else:
        per_row = np.zeros(len(t))
    # requests without chunk data: one token at first_token_s, the rest spread evenly to end_s
    bare = rows & (t.n_chunks == 0) & np.isfinite(t.first_token_s) & np.isfinite(t.end_s)
    if bare.any():
        f, e = t.first_token_s[bare], t.end_s[bare]
        k = t.output_tokens[bare].astype(np.float64)
        first = ((f >= lo) & (f < hi)).astype(np.float64)
        span = e - f
        overlap = np.clip(np.minimum(e, hi) - np.maximum(f, lo), 0, None)
        frac = np.where(span > 0, overlap / np.where(span > 0, span, 1.0),
                        ((e >= lo) & (e < hi)).astype(np.float64))
        per_row[bare] = first + (k - 1) * frac
    return per_row


def _throughput(ctx: _Context, t: RequestTable, m: dict, is_ok, ok, ttft, tpot_all, e2el
                ) -> None:
    d = ctx.duration
    if ctx.slos:
        good = np.ones(len(ttft), dtype=bool)
        for key, values in (("ttft", ttft), ("tpot", tpot_all), ("e2el", e2el)):
            if key in ctx.slos:
                good &= (ctx.slos[key] / MS_PER_S) >= values
    if not ctx.windowed:
        m["request_throughput"] = _div(m["completed"], d)
        m["request_goodput"] = _div(int(good.sum()), d) if ctx.slos else None
        m["output_throughput"] = _div(m["total_output_tokens"], d)
        m["total_token_throughput"] = _div(m["total_input_tokens"] + m["total_output_tokens"], d)
        return
    hi = ctx.w1 if math.isfinite(ctx.w1) else ctx.w0 + (d or 0.0)
    done = is_ok & (t.end_s >= ctx.w0) & (t.end_s < hi)
    out_tokens = float(_tokens_in(t, is_ok, ctx.w0, hi).sum())
    started = is_ok & (t.first_token_s >= ctx.w0) & (t.first_token_s < hi)
    prompts = int(t.prompt_tokens[started].sum())
    m["request_throughput"] = _div(int(done.sum()), d)
    if ctx.slos:
        good_rows = np.zeros(len(t), dtype=bool)
        good_rows[np.flatnonzero(ok)[good]] = True
        m["request_goodput"] = _div(int((good_rows & done).sum()), d)
    else:
        m["request_goodput"] = None
    m["output_throughput"] = _div(_int_if_whole(out_tokens), d)
    m["total_token_throughput"] = _div(prompts + out_tokens, d)


def _peaks(t: RequestTable, ok: np.ndarray, all_ok: bool) -> dict[str, Any]:
    """vLLM's two per-second histograms over successful requests (serve.py, v0.32)."""
    if not ok.any():
        return {"max_output_tokens_per_s": None, "max_concurrent_requests": None}
    start = t.sent_s[ok]
    stop = start + t.e2el_s[ok]
    t0 = start.min()
    n_buckets = int(np.ceil(stop.max() - t0)) + 1
    first = np.trunc(start - t0).astype(np.int64)   # int() truncates toward zero
    last = np.trunc(stop - t0).astype(np.int64)
    delta = np.bincount(first, minlength=n_buckets + 1) - np.bincount(last + 1,
                                                                       minlength=n_buckets + 1)
    concurrent = np.cumsum(delta[:n_buckets])
    out: dict[str, Any] = {"max_concurrent_requests": int(concurrent.max())}
    if len(t.chunk_t) == 0:
        out["max_output_tokens_per_s"] = None
        return out
    times = t.chunk_t if all_ok else t.chunk_t[t.chunk_mask(ok)]
    hist = np.zeros(n_buckets, dtype=np.int64)
    # small blocks in two reused buffers: no fresh temporaries for 10^8 chunks
    since = np.empty(min(BLOCK, len(times)), dtype=np.float64)
    buckets = np.empty(len(since), dtype=np.int64)
    for lo in range(0, len(times), BLOCK):
        block = times[lo:lo + BLOCK]
        np.subtract(block, t0, out=since[:len(block)])
        bucket = buckets[:len(block)]
        np.copyto(bucket, since[:len(block)], casting="unsafe")  # truncates toward 0, as int()
        if bucket.size and (bucket.min() < 0 or bucket.max() >= n_buckets):
            bucket = bucket[(bucket >= 0) & (bucket < n_buckets)]
        hist += np.bincount(bucket, minlength=n_buckets)[:n_buckets]
    out["max_output_tokens_per_s"] = float(hist.max())
    return out


def _offered_served(ctx: _Context, t: RequestTable, in_window: np.ndarray, is_ok: np.ndarray
                    ) -> dict[str, Any]:
    w1 = ctx.w1
    if math.isfinite(ctx.offer_end):
        in_window = in_window & (t.arrival_s < ctx.offer_end)
    offered_prompt = int(t.prompt_tokens[in_window].sum())
    offered_output = int(t.requested_output_tokens[in_window].sum())
    served_req = in_window & is_ok & (t.end_s < w1)
    if math.isfinite(w1):
        by_chunks = _tokens_in(t, in_window, -math.inf, w1)
    else:  # whole run: usage counts for successes, streamed chunks for the rest
        rest = in_window & ~is_ok
        by_chunks = _tokens_in(t, rest, -math.inf, math.inf) if rest.any() else np.zeros(len(t))
    served_out_row = np.where(served_req, t.output_tokens, by_chunks)
    served_output = float(served_out_row[in_window].sum())
    served_prompt = int(t.prompt_tokens[in_window & (t.first_token_s < w1)].sum())
    never = in_window & ~(t.first_token_s < ctx.horizon)
    offered = offered_prompt + offered_output
    served = served_prompt + served_output
    return {
        "offered_requests": int(in_window.sum()), "served_requests": int(served_req.sum()),
        "offered_tokens": offered, "served_tokens": _int_if_whole(served),
        "offered_output_tokens": offered_output,
        "served_output_tokens": _int_if_whole(served_output),
        "served_token_ratio": None if offered == 0 else served / offered,
        "never_started_requests": int(never.sum()),
    }


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _definitions(metrics: dict[str, Any], timing: str) -> dict[str, str]:
    defs = {}
    for key in metrics:
        fam = _family(key)
        if fam == "itl" and timing == "sketch":
            fam = "itl_sketch"
        if fam in DEFINITIONS:
            defs[key] = DEFINITIONS[fam]
        elif key == "num_requests":
            defs[key] = "requests arriving in the window (whole run without one), warm-up excluded"
        elif key.endswith("_requests"):
            defs[key] = f"requests with status {key[:-9]} (window arrivals)"
    return defs


def definition_items(summaries) -> list[tuple[str, str]]:
    """[(metric family, definition)] over some summaries, each definition once."""
    seen: dict[str, str] = {}
    for s in summaries:
        for key, text in s.definitions.items():
            fam = _family(key)
            name = f"{fam} (mean/median/std/pXX, ms)" if key.endswith("_ms") else fam
            seen.setdefault(text, name)
    return [(name, text) for text, name in seen.items()]
