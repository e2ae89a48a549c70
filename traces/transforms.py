"""Trace transforms. Each returns a new trace and records itself in `meta["transforms"]`."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from twinbench.traces.core import Adapter, Trace, TraceError


def window(trace: Trace, start_s: float, end_s: float | None = None,
           rebase: bool = True) -> Trace:
    """Requests arriving in [start_s, end_s); with `rebase`, `start_s` becomes time 0."""
    if end_s is not None and not end_s > start_s:
        raise TraceError(f"window {start_s:g}:{end_s:g} is empty (end must be after start)")
    mask = trace.arrival_s >= start_s
    if end_s is not None:
        mask &= trace.arrival_s < end_s
    out = trace.select(mask, transform=f"window({start_s:g}, {end_s if end_s is None else f'{end_s:g}'})")
    if rebase:
        out.arrival_s = out.arrival_s - start_s
    return out


def time_scale(trace: Trace, speedup: float) -> Trace:
    """Replay `speedup` times faster (2 halves every arrival time; 0.5 doubles them)."""
    if not speedup > 0 or not np.isfinite(speedup):
        raise TraceError(f"time scale {speedup!r}: the speed-up must be a positive number")
    return trace.with_columns(transform=f"time_scale({speedup:g})",
                              arrival_s=trace.arrival_s / speedup)


def mean_rate(trace: Trace) -> float:
    """1 / mean inter-arrival gap (the definition `inspect_stats` reports)."""
    if len(trace) < 2 or not trace.duration_s > 0:
        raise TraceError("a rate needs at least two requests at different times")
    return (len(trace) - 1) / trace.duration_s


def rescale_rate(trace: Trace, rate_rps: float) -> Trace:
    """Scale arrival times about the first arrival so the mean rate becomes `rate_rps`
    (the shape of the arrival process, burstiness included, is kept)."""
    if not rate_rps > 0 or not np.isfinite(rate_rps):
        raise TraceError(f"rate {rate_rps!r}: must be a positive number of requests/s")
    factor = mean_rate(trace) / rate_rps
    t0 = trace.arrival_s[0]
    return trace.with_columns(transform=f"rescale_rate({rate_rps:g})",
                              arrival_s=t0 + (trace.arrival_s - t0) * factor)


def subsample(trace: Trace, fraction: float, seed: int = 0) -> Trace:
    """Keep round(fraction · n) requests chosen at random (order kept)."""
    if not 0 < fraction <= 1:
        raise TraceError(f"subsample fraction {fraction!r}: must be in (0, 1]")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5AB]))
    k = int(round(fraction * len(trace)))
    keep = np.sort(rng.choice(len(trace), k, replace=False))
    return trace.select(keep, transform=f"subsample({fraction:g}, seed={seed})")


def head(trace: Trace, max_requests: int) -> Trace:
    """The first `max_requests` requests."""
    if max_requests < 1:
        raise TraceError(f"max requests {max_requests}: must be >= 1")
    if max_requests >= len(trace):
        return trace
    return trace.select(np.arange(max_requests), transform=f"head({max_requests})")


def clip_lengths(trace: Trace, max_model_len: int) -> Trace:
    """Make prompt + output fit `max_model_len` (vLLM's limit on a sequence): prompts keep
    at most max_model_len − 1 tokens, outputs what is left. The count of changed requests
    goes to `meta["clipped_requests"]`."""
    if max_model_len < 2:
        raise TraceError(f"max model len {max_model_len}: must be >= 2")
    prompt = np.minimum(trace.prompt_tokens, max_model_len - 1)
    output = np.minimum(trace.output_tokens, max_model_len - prompt)
    changed = int(np.count_nonzero((prompt != trace.prompt_tokens) |
                                   (output != trace.output_tokens)))
    out = trace.with_columns(transform=f"clip_lengths({max_model_len})",
                             prompt_tokens=prompt.astype(np.int32),
                             output_tokens=output.astype(np.int32))
    out.meta["clipped_requests"] = int(trace.meta.get("clipped_requests", 0)) + changed
    return out


def shift_to_zero(trace: Trace) -> Trace:
    """Move the first arrival to time 0."""
    if not len(trace):
        return trace
    return trace.with_columns(transform="shift_to_zero",
                              arrival_s=trace.arrival_s - trace.arrival_s[0])


def merge(traces: Sequence[Trace], tenants: Sequence[str] | None = None) -> Trace:
    """One multi-tenant trace from several, interleaved by arrival time.

    A trace without tenants becomes tenant `tenants[k]` (default `t0`, `t1`, ...). Adapter
    catalogs are united by name (the same name with different ranks is an error). Ids are
    prefixed with the tenant (`t0:17`) so they stay unique, and prefix-block hash ids are
    offset per trace so unrelated traces never appear to share a prefix.
    """
    if not traces:
        raise TraceError("merge needs at least one trace")
    labels = list(tenants) if tenants is not None else [f"t{k}" for k in range(len(traces))]
    if len(labels) != len(traces):
        raise TraceError(f"merge: {len(traces)} traces but {len(labels)} tenant names")
    adapters: list[Adapter] = []
    by_name: dict[str, int] = {}
    tenant_names: list[str] = []
    tenant_index: dict[str, int] = {}
    cols: dict[str, list] = {k: [] for k in ("t", "a", "p", "o", "pr", "id", "tn", "pl", "pf",
                                             "pc")}
    any_prefix = any(t.prefix_flat is not None for t in traces)
    any_prompt = any(t.prompts is not None for t in traces)
    offset = 0
    for tr, label in zip(traces, labels):
        amap = np.empty(len(tr.adapters) + 1, dtype=np.int32)
        amap[-1] = -1
        for k, a in enumerate(tr.adapters):
            if a.name in by_name:
                if adapters[by_name[a.name]] != a:
                    raise TraceError(f"merge: adapter {a.name!r} differs between traces "
                                     f"({adapters[by_name[a.name]]} vs {a})")
            else:
                by_name[a.name] = len(adapters)
                adapters.append(a)
            amap[k] = by_name[a.name]
        own = list(tr.tenants) if tr.tenant_idx is not None else [label]
        tmap = np.empty(len(own) + 1, dtype=np.int32)
        tmap[-1] = -1
        for k, name in enumerate(own):
            tmap[k] = tenant_index.setdefault(name, len(tenant_index))
            if len(tenant_names) < len(tenant_index):
                tenant_names.append(name)
        local_t = tr.tenant_idx if tr.tenant_idx is not None else np.zeros(len(tr), np.int32)
        cols["t"].append(tr.arrival_s)
        cols["a"].append(amap[tr.adapter_idx])
        cols["p"].append(tr.prompt_tokens)
        cols["o"].append(tr.output_tokens)
        cols["pr"].append(tr.priority)
        cols["tn"].append(tmap[local_t])
        cols["id"].append(np.array([f"{label}:{tr.request_id(i)}" for i in range(len(tr))],
                                   dtype=object))
        if any_prefix:
            flat = tr.prefix_flat if tr.prefix_flat is not None else np.empty(0, np.int64)
            counts = np.diff(tr.prefix_offsets) if tr.prefix_flat is not None \
                else np.zeros(len(tr), np.int64)
            shifted = flat - (flat.min() if len(flat) else 0) + offset
            offset = int(shifted.max()) + 1 if len(shifted) else offset
            cols["pf"].append(shifted)
            cols["pc"].append(counts)
        if any_prompt:
            cols["pl"].append(tr.prompts if tr.prompts is not None
                              else np.full(len(tr), None, dtype=object))
    flat = offsets = None
    if any_prefix:
        counts = np.concatenate(cols["pc"])
        flat = np.concatenate(cols["pf"])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    merged = Trace(
        arrival_s=np.concatenate(cols["t"]), adapter_idx=np.concatenate(cols["a"]),
        prompt_tokens=np.concatenate(cols["p"]), output_tokens=np.concatenate(cols["o"]),
        priority=np.concatenate(cols["pr"]), ids=np.concatenate(cols["id"]),
        adapters=adapters, tenant_idx=np.concatenate(cols["tn"]), tenants=tenant_names,
        prefix_flat=flat, prefix_offsets=offsets,
        prompts=np.concatenate(cols["pl"]) if any_prompt else None,
        meta={"source": [t.meta.get("source") for t in traces], "format": "merged",
              "sha256": [t.meta.get("sha256") for t in traces], "transforms": [],
              "seed": None, "merged_tenants": labels})
    block = {t.meta.get("prefix_block_tokens") for t in traces if t.prefix_flat is not None}
    if len(block) == 1:
        merged.meta["prefix_block_tokens"] = block.pop()
    order = np.argsort(merged.arrival_s, kind="stable")
    out = merged.select(order, transform=f"merge({', '.join(labels)})")
    return out


def equal(a: Trace, b: Trace) -> bool:
    """Same requests (ids, times, adapters with their catalog entries, tenants, lengths,
    prefix blocks, prompts, priorities) in the same order; meta is not compared."""
    if len(a) != len(b):
        return False
    same = (np.array_equal(a.arrival_s, b.arrival_s)
            and np.array_equal(a.prompt_tokens, b.prompt_tokens)
            and np.array_equal(a.output_tokens, b.output_tokens)
            and np.array_equal(a.priority, b.priority)
            and a.adapters == b.adapters and np.array_equal(a.adapter_idx, b.adapter_idx)
            and (a.ids is None) == (b.ids is None)
            and (a.ids is None or np.array_equal(a.ids.astype(str), b.ids.astype(str)))
            and (a.tenant_idx is None) == (b.tenant_idx is None)
            and (a.prefix_flat is None) == (b.prefix_flat is None)
            and (a.prompts is None) == (b.prompts is None))
    if not same:
        return False
    if a.tenant_idx is not None:
        ta = np.array(list(a.tenants) + [None], dtype=object)[a.tenant_idx]
        tb = np.array(list(b.tenants) + [None], dtype=object)[b.tenant_idx]
        if not np.array_equal(ta, tb):
            return False
    if a.prefix_flat is not None and not (np.array_equal(a.prefix_flat, b.prefix_flat) and
                                          np.array_equal(a.prefix_offsets, b.prefix_offsets)):
        return False
    if a.prompts is not None and list(a.prompts) != list(b.prompts):
        return False
    return True


def replace_meta(trace: Trace, **meta) -> Trace:
    return dataclasses.replace(trace, meta={**trace.meta, **meta})
