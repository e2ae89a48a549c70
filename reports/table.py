"""`RequestTable`: a run's records as NumPy columns, the one input every metric reads.

Records (objects or run-file JSON lines) and vLLM result files are both turned into this table,
so metrics are vectorised and never loop per token in Python. Token timing lives in flat
"chunk" arrays (CSR layout: request i owns chunks `chunk_start[i]:chunk_start[i+1]`), expanded
from exact arrays or from twin step segments. Latencies that a source gives exactly (vLLM's
`ttfts`, `latencies`, `itls`) are kept as given, so re-scoring them reproduces vLLM bit for bit.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter, is_not
from typing import Sequence

import numpy as np

from twinbench.reports.records import STATUSES, RequestRecord

BASE = "(base)"  # adapter key of requests to the base model (adapter None)
OK = STATUSES.index("ok")


@dataclass
class RequestTable:
    """One row per request; times in seconds on `clock` (run clock + `origin_s`)."""

    ids: np.ndarray                  # object array of request ids
    adapter_idx: np.ndarray          # int32 index into `adapters`; rows grouped by adapter
    adapters: list[str]              # adapter keys (BASE for the base model)
    warmup: np.ndarray               # bool
    status: np.ndarray               # int8 index into records.STATUSES
    arrival_s: np.ndarray            # float64
    client_queue_s: np.ndarray
    sent_s: np.ndarray               # NaN = never sent
    first_token_s: np.ndarray        # NaN = no token
    end_s: np.ndarray
    ttft_s: np.ndarray               # first_token - sent, or exact from the source
    e2el_s: np.ndarray               # end - sent, or exact from the source
    prompt_tokens: np.ndarray        # int64
    requested_output_tokens: np.ndarray
    output_tokens: np.ndarray        # int64; usage, else chunk-token sum, else requested
    chunk_start: np.ndarray          # int64, len n + 1
    chunk_t: np.ndarray              # float64 chunk times
    chunk_n: np.ndarray | None       # int32 tokens per chunk; None = one token each
    gap_s: np.ndarray | None = None  # exact per-chunk gaps (len chunks - requests with chunks)
    timing: str = "none"             # "exact" | "segments" | "sketch" | "vllm-arrays" | "none"
    origin_s: float = 0.0            # the run clock's 0 on this table's clock
    duration_s: float | None = None  # given by the source (vLLM), else derived
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_chunks(self) -> np.ndarray:
        return np.diff(self.chunk_start)

    def gap_counts(self) -> np.ndarray:
        return np.maximum(self.n_chunks - 1, 0)

    def gaps(self) -> np.ndarray:
        """Pooled ITL gaps in s: request order, chunk order within a request."""
        if self.gap_s is not None:
            return self.gap_s
        counts = self.n_chunks
        d = np.diff(self.chunk_t)
        # drop the differences that straddle two requests: those sit at each request's last chunk
        ends = self.chunk_start[1:] - 1
        ends = ends[(counts > 0) & (ends < len(d))]
        if ends.size == 0:
            return d
        keep = np.ones(len(d), dtype=bool)
        keep[ends] = False
        return d[keep]

    def chunk_mask(self, rows: np.ndarray) -> np.ndarray:
        """Row mask -> chunk mask."""
        return np.repeat(rows, self.n_chunks)

    def tokens_per_row(self, chunk_mask: np.ndarray | None = None) -> np.ndarray:
        """Tokens of each row's chunks (only the masked chunks, if a mask is given)."""
        if chunk_mask is None:
            if self.chunk_n is None:
                return self.n_chunks.astype(np.float64)
            return self.per_row_sum(self.chunk_n)
        if self.chunk_n is None:
            return self.per_row_sum(chunk_mask)
        return self.per_row_sum(np.where(chunk_mask, self.chunk_n, 0))

    def per_row_sum(self, chunk_values: np.ndarray) -> np.ndarray:
        """Sum of a per-chunk array over each row's chunks."""
        csum = np.zeros(len(chunk_values) + 1, dtype=np.float64)
        np.cumsum(chunk_values, out=csum[1:])
        return csum[self.chunk_start[1:]] - csum[self.chunk_start[:-1]]

    def groups(self) -> list[tuple[str, int, int]]:
        """(adapter, first row, end row) of each adapter present; rows are grouped."""
        if len(self) == 0:
            return []
        change = np.flatnonzero(np.diff(self.adapter_idx)) + 1
        lo = np.concatenate(([0], change))
        hi = np.concatenate((change, [len(self)]))
        return [(self.adapters[int(self.adapter_idx[a])], int(a), int(b)) for a, b in zip(lo, hi)]

    def slice(self, lo: int, hi: int) -> "RequestTable":
        """Rows lo..hi-1 as views (no copy of the chunk arrays)."""
        c0, c1 = int(self.chunk_start[lo]), int(self.chunk_start[hi])
        gap = None
        if self.gap_s is not None:
            g = np.concatenate(([0], np.cumsum(self.gap_counts())))
            gap = self.gap_s[g[lo]:g[hi]]
        return RequestTable(
            ids=self.ids[lo:hi], adapter_idx=self.adapter_idx[lo:hi], adapters=self.adapters,
            warmup=self.warmup[lo:hi], status=self.status[lo:hi],
            arrival_s=self.arrival_s[lo:hi], client_queue_s=self.client_queue_s[lo:hi],
            sent_s=self.sent_s[lo:hi], first_token_s=self.first_token_s[lo:hi],
            end_s=self.end_s[lo:hi], ttft_s=self.ttft_s[lo:hi], e2el_s=self.e2el_s[lo:hi],
            prompt_tokens=self.prompt_tokens[lo:hi],
            requested_output_tokens=self.requested_output_tokens[lo:hi],
            output_tokens=self.output_tokens[lo:hi],
            chunk_start=self.chunk_start[lo:hi + 1] - c0, chunk_t=self.chunk_t[c0:c1],
            chunk_n=None if self.chunk_n is None else self.chunk_n[c0:c1], gap_s=gap, timing=self.timing, origin_s=self.origin_s,
            duration_s=self.duration_s, errors=self.errors[lo:hi] if self.errors else [])

    def select(self, mask: np.ndarray) -> "RequestTable":
        """Rows where `mask` holds, chunks and gaps carried along."""
        idx = np.flatnonzero(mask)
        counts = self.n_chunks
        cmask = np.repeat(mask, counts)
        new_start = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts[idx], out=new_start[1:])
        gap = None
        if self.gap_s is not None:
            gap = self.gap_s[np.repeat(mask, np.maximum(counts - 1, 0))]
        return RequestTable(
            ids=self.ids[idx], adapter_idx=self.adapter_idx[idx],
            adapters=self.adapters, warmup=self.warmup[idx], status=self.status[idx],
            arrival_s=self.arrival_s[idx], client_queue_s=self.client_queue_s[idx],
            sent_s=self.sent_s[idx], first_token_s=self.first_token_s[idx],
            end_s=self.end_s[idx], ttft_s=self.ttft_s[idx], e2el_s=self.e2el_s[idx],
            prompt_tokens=self.prompt_tokens[idx],
            requested_output_tokens=self.requested_output_tokens[idx],
            output_tokens=self.output_tokens[idx], chunk_start=new_start,
            chunk_t=self.chunk_t[cmask],
            chunk_n=None if self.chunk_n is None else self.chunk_n[cmask], gap_s=gap,
            timing=self.timing, origin_s=self.origin_s, duration_s=self.duration_s,
            errors=[self.errors[i] for i in idx] if self.errors else [],
        )


_ROW_FIELDS = ("id", "adapter", "warmup", "status", "arrival_s", "client_queue_s", "sent_s",
               "first_token_s", "end_s", "prompt_tokens", "requested_output_tokens",
               "output_tokens", "error")


class TableBuilder:
    """Accumulates rows (run-file dicts one by one, or record objects in bulk) into columns.

    Rows are grouped by adapter at build time (stable), so that per-adapter metrics work on
    contiguous views; within an adapter, emission order is kept.
    """

    def __init__(self) -> None:
        self.rows: dict[str, list] = {k: [] for k in _ROW_FIELDS}
        self.chunk_t: list[np.ndarray | None] = []
        self.chunk_n: list[np.ndarray | None] = []
        self.segments: list[np.ndarray | None] = []

    def add(self, rid, adapter, warmup, status, arrival_s, client_queue_s, sent_s,
            first_token_s, end_s, prompt_tokens, requested_output_tokens, output_tokens,
            error, chunk_t=None, chunk_n=None, segments=None) -> None:
        for key, value in zip(_ROW_FIELDS, (rid, adapter, warmup, status, arrival_s,
                                            client_queue_s or 0.0, sent_s, first_token_s, end_s,
                                            prompt_tokens, requested_output_tokens,
                                            output_tokens, error)):
            self.rows[key].append(value)
        self.chunk_t.append(chunk_t)
        self.chunk_n.append(chunk_n)
        self.segments.append(segments if chunk_t is None else None)

    def add_records(self, records: Sequence[RequestRecord]) -> None:
        """Bulk path: one C-level `map` per field, no per-record Python call."""
        r = self.rows
        for key in _ROW_FIELDS:
            if key != "client_queue_s":
                r[key] += map(attrgetter(key), records)
        r["client_queue_s"] += [x.client_queue_s or 0.0 for x in records]
        self.chunk_t += map(attrgetter("chunk_times"), records)
        self.chunk_n += map(attrgetter("chunk_tokens"), records)
        self.segments += [x.segments if x.chunk_times is None else None for x in records]

    def build(self, sketch_mode: bool = False) -> RequestTable:
        r = self.rows
        n = len(r["id"])
        # adapter -> index without a Python-level loop per row (set and map run in C)
        raw_names = set(r["adapter"])
        key_of = {a: BASE if a is None else str(a) for a in raw_names}
        names = sorted(set(key_of.values()))
        index_of = {a: names.index(k) for a, k in key_of.items()}
        adapter_idx = np.fromiter(map(index_of.__getitem__, r["adapter"]), dtype=np.int32,
                                  count=n)
        order = None
        if len(names) > 1 and np.any(np.diff(adapter_idx) < 0):
            order = np.argsort(adapter_idx, kind="stable")

        def arr(values: list, dtype) -> np.ndarray:  # build in arrival order, then group
            a = np.array(values, dtype=dtype).reshape(n)
            return a if order is None else a[order]

        # a plain-int list: iterating the int64 array would make a NumPy scalar per row
        order_list = None if order is None else order.tolist()

        def lst(values: list) -> list:
            return values if order_list is None else list(map(values.__getitem__, order_list))

        if order is not None:
            adapter_idx = adapter_idx[order]
        status_of = {s: k for k, s in enumerate(STATUSES)}
        status = np.fromiter(map(status_of.get, r["status"], repeat(1)), dtype=np.int8,
                             count=n)  # unknown -> error
        status = status if order is None else status[order]
        counts, chunk_t, chunk_n, kinds = _chunks(lst(self.chunk_t), lst(self.chunk_n),
                                                  lst(self.segments))
        chunk_start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=chunk_start[1:])
        sent = arr(r["sent_s"], np.float64)          # NumPy turns None into NaN
        first = arr(r["first_token_s"], np.float64)
        end = arr(r["end_s"], np.float64)
        requested = arr(r["requested_output_tokens"], np.int64)
        usage_f = arr(r["output_tokens"], np.float64)
        usage = np.where(np.isnan(usage_f), -1, usage_f).astype(np.int64)
        if chunk_n is None:
            chunk_tokens = counts
        else:
            csum = np.zeros(len(chunk_n) + 1, dtype=np.int64)
            np.cumsum(chunk_n, out=csum[1:])
            chunk_tokens = csum[chunk_start[1:]] - csum[chunk_start[:-1]]
        # output tokens: server usage when given, else what the chunks carried, else the trace's
        output = np.where(usage >= 0, usage, np.where(counts > 0, chunk_tokens, requested))
        if kinds == {"exact"}:
            timing = "exact"
        elif kinds == {"segments"}:
            timing = "segments"
        elif kinds:
            timing = "exact+segments"
        else:
            timing = "sketch" if sketch_mode else "none"
        ids = np.empty(n, dtype=object)
        ids[:] = list(map(str, r["id"]))  # str(x) is x itself for a str
        return RequestTable(
            ids=ids if order is None else ids[order], adapter_idx=adapter_idx, adapters=names,
            warmup=arr(r["warmup"], bool), status=status,
            arrival_s=arr(r["arrival_s"], np.float64),
            client_queue_s=arr(r["client_queue_s"], np.float64),
            sent_s=sent, first_token_s=first, end_s=end, ttft_s=first - sent, e2el_s=end - sent,
            prompt_tokens=arr(r["prompt_tokens"], np.int64),
            requested_output_tokens=requested, output_tokens=output, chunk_start=chunk_start,
            chunk_t=chunk_t, chunk_n=chunk_n, timing=timing, errors=lst(r["error"]),
        )


def _chunks(ct: list, cn: list, seg: list
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[str]]:
    """(chunks per row, flat times, flat tokens, kinds) in row order; segments expanded
    without a per-chunk loop."""
    n = len(ct)
    if n and not any(map(is_not, seg, repeat(None))) and all(map(is_not, ct, repeat(None))):
        # the common case (real backend, every request streamed): no per-row work at all
        counts = np.fromiter(map(len, ct), dtype=np.int64, count=n)
        flat_t = _join(ct, counts)
        if not any(map(is_not, cn, repeat(None))):
            return counts, flat_t, None, {"exact"}
        flat_n = np.concatenate([np.ones(len(t), np.int32) if k is None else k
                                 for t, k in zip(ct, cn)]).astype(np.int32, copy=False)
        return counts, flat_t, flat_n, {"exact"}
    exact_rows = [i for i, x in enumerate(ct) if x is not None]
    seg_rows = [i for i, x in enumerate(seg) if x is not None and len(x)]
    kinds = ({"exact"} if exact_rows else set()) | ({"segments"} if seg_rows else set())
    counts = np.zeros(n, dtype=np.int64)
    if exact_rows:
        counts[exact_rows] = [len(ct[i]) for i in exact_rows]
    seg_t = seg_n = None
    if seg_rows:
        arrays = [np.asarray(seg[i], np.int64).reshape(-1, 4) for i in seg_rows]
        per_row = np.array([len(a) for a in arrays], dtype=np.int64)
        rows = np.concatenate(arrays)
        k_per_seg = rows[:, 2]
        seg_csum = np.concatenate(([0], np.cumsum(k_per_seg)))
        bounds = np.concatenate(([0], np.cumsum(per_row)))
        counts[seg_rows] = seg_csum[bounds[1:]] - seg_csum[bounds[:-1]]
        total = int(seg_csum[-1])
        k = np.arange(total, dtype=np.int64) - np.repeat(seg_csum[:-1], k_per_seg)
        seg_t = (np.repeat(rows[:, 0], k_per_seg) + k * np.repeat(rows[:, 1], k_per_seg)) / 1e9
        seg_n = np.repeat(rows[:, 3], k_per_seg).astype(np.int32)
    if not exact_rows:
        if seg_t is None:
            return counts, np.empty(0), None, kinds
        return counts, seg_t, seg_n, kinds
    ex_t = np.concatenate([np.asarray(ct[i], dtype=np.float64) for i in exact_rows])
    if all(cn[i] is None for i in exact_rows):
        if seg_t is None or bool(np.all(seg_n == 1)):
            ex_n = None   # one token per chunk everywhere: no array at all
        else:
            ex_n = np.ones(len(ex_t), dtype=np.int32)
    else:
        ex_n = np.concatenate([np.ones(len(ct[i]), np.int32) if cn[i] is None
                               else np.asarray(cn[i], np.int32) for i in exact_rows])
    if seg_t is None:
        return counts, ex_t, ex_n, kinds
    if ex_n is None:
        seg_n = None
    is_seg = np.zeros(n, dtype=bool)
    is_seg[seg_rows] = True
    seg_mask = np.repeat(is_seg, counts)
    t = np.empty(len(seg_mask))
    kk = np.empty(len(seg_mask), np.int32)
    t[seg_mask], t[~seg_mask] = seg_t, ex_t
    if ex_n is None:
        return counts, t, None, kinds
    kk[seg_mask], kk[~seg_mask] = seg_n, ex_n
    return counts, t, kk, kinds


def _join(arrays: list, counts: np.ndarray) -> np.ndarray:
    """`np.concatenate(arrays)` as float64 into one preallocated buffer, so that buffer can be
    prefaulted (1M arrays of 100: `np.concatenate(..., out=)` 0.24-0.28 s; filling slice by
    slice from Python 0.58-0.65 s; a fresh `np.concatenate` pays the first touch on top)."""
    out = _prefaulted_float64(int(counts.sum()))
    if len(arrays):
        np.concatenate(arrays, out=out)
    return out


_PREFAULT_MIN_BYTES = 64 << 20


def _prefaulted_float64(size: int) -> np.ndarray:
    """An uninitialised float64 array; a big one is mapped with its pages faulted in by one
    system call (Linux MAP_POPULATE). Touching fresh memory page by page costs seconds per GiB
    of system time on lazily backed VMs: for the 800 MB chunk buffer of 1M records x 100
    chunks, the table build went from 5.7 s to 3.0 s CPU. The mapping is released with the
    array (so a repeated build pays the ~0.4 s populate again instead of reusing heap memory).
    Elsewhere this is just `np.empty`."""
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or size * 8 < _PREFAULT_MIN_BYTES:
        return np.empty(size, dtype=np.float64)
    try:
        buf = mmap.mmap(-1, size * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except OSError:
        return np.empty(size, dtype=np.float64)
    return np.frombuffer(buf, dtype=np.float64)


def table_from_records(records: Sequence[RequestRecord], sketch_mode: bool = False
                       ) -> RequestTable:
    b = TableBuilder()
    b.add_records(records)
    return b.build(sketch_mode=sketch_mode)
