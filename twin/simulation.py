"""`simulate()`: replay a trace on one twin engine and build a `RequestRecord` per request."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from twinbench.backends.base import RunInfo
from twinbench.reports.records import RequestRecord
from twinbench.traces.core import Trace
from twinbench.traces.gcpause import gc_paused
from twinbench.twin.config import ServerConfig
from twinbench.twin.engine import Engine, Req
from twinbench.twin.profile import Profile

FEED_BATCH = 2048            # requests submitted to the engine at a time (bounded memory)
FOREVER_NS = 2**62
SKETCH_FLUSH = 1 << 19       # ITL samples buffered (all adapters) before the sketches update
BASE_KEY = "(base)"


@dataclass
class SimResult:
    records: list[RequestRecord]
    info: RunInfo
    stats: dict[str, Any]
    sketches: dict[str, Any] = field(default_factory=dict)
    step_log: list[dict] | None = None


class _Collector:
    """Turns finished engine requests into records (exact token times or sketches).

    With exact token times and no `emit`, building records is deferred to `finish_records()`:
    a finished request only leaves a tuple, the engine keeps its whole step table, and each
    record's `chunk_times` is a slice of one table of step end times in seconds, divided once
    for the run (the per-record arrays and NumPy calls dominated the cost of a record).
    """

    def __init__(self, trace: Trace, engine: Engine, order_ids: list, token_timestamps: str,
                 warmup_requests: int, replica: int | None, emit: Callable | None):
        self.trace = trace
        self.engine = engine
        self.names = [a.name for a in trace.adapters]
        self.ids = order_ids
        self.exact = token_timestamps == "exact"
        self.warmup = warmup_requests
        self.replica = replica
        self.emit = emit
        self.records: list[RequestRecord] = []
        self.out_ns = engine.model.output_ns
        self.itl_buffers: dict[str, list[np.ndarray]] = {}
        self.itl_buffered = 0
        self.sketches: dict[str, Any] = {}
        self.deferred = self.exact and emit is None
        if self.deferred:
            engine.table.keep_all = True

    def token_times_ns(self, req: Req) -> np.ndarray:
        table = self.engine.table
        if not req.old_runs:
            if not req.run_len:
                return np.empty(0, dtype=np.int64)
            times = table.slice(req.run_start, req.run_len)
        else:
            times = np.concatenate([table.slice(s, n) for s, n in req.token_runs()])
        return times + self.out_ns if self.out_ns else times

    def __call__(self, req: Req, error: str | None = None, status: str | None = None) -> None:
        if error is not None:
            status_, out = "error", 0
        else:
            status_ = status or ("ok" if req.output >= req.target else "unfinished")
            out = req.output
        if self.deferred:
            # a placeholder in finish order, replaced by its record in finish_records()
            # (a plain tuple: a NamedTuple's constructor costs as much as the rest of the call)
            runs = req.old_runs and req.token_runs()
            self.records.append(_PENDING + (self, req.key, req.prompt, req.requested, out,
                                            status_, error, req.run_start,
                                            req.run_len if out else 0, runs))
            return
        i = req.key
        trace = self.trace
        a = int(trace.adapter_idx[i])
        arrival_s = float(trace.arrival_s[i])
        first = last = chunk_times = None
        if error is None and req.output:
            if self.exact:
                times = self.token_times_ns(req)
                first, last = int(times[0]) / 1e9, int(times[-1]) / 1e9
                chunk_times = times / 1e9
            else:  # sketch: no arrays kept; gaps straight from the step table
                if req.old_runs:
                    times = self.token_times_ns(req)
                    gaps = times[1:] - times[:-1]
                    f, l = int(times[0]), int(times[-1])
                else:
                    v = self.engine.table.slice(req.run_start, req.run_len)
                    gaps = v[1:] - v[:-1]
                    f, l = int(v[0]) + self.out_ns, int(v[-1]) + self.out_ns
                first, last = f / 1e9, l / 1e9
                if len(gaps):
                    self._add_itl(self.names[a] if a >= 0 else BASE_KEY, gaps)
        rec = RequestRecord(
            id=self.ids[i], adapter=self.names[a] if a >= 0 else None, replica=self.replica,
            warmup=i < self.warmup, arrival_s=arrival_s, client_queue_s=0.0,
            sent_s=arrival_s, prompt_tokens=req.prompt, requested_output_tokens=req.requested,
            output_tokens=out, status=status_, error=error, first_token_s=first, end_s=last,
            chunk_times=chunk_times)
        if self.emit is not None:
            self.emit(rec)
        else:
            self.records.append(rec)

    def step_seconds(self) -> np.ndarray:
        """Every step's token time in seconds (end + frontend output delay), by step number."""
        table = self.engine.table
        assert table.base == 0, "deferred records need the whole step table"
        times = table.stored()
        return (times + self.out_ns if self.out_ns else times) / 1e9

    def _add_itl(self, key: str, gaps_ns: np.ndarray) -> None:
        buf = self.itl_buffers.get(key)
        if buf is None:
            buf = self.itl_buffers[key] = []
        buf.append(gaps_ns)
        self.itl_buffered += len(gaps_ns)
        if self.itl_buffered >= SKETCH_FLUSH:
            self._flush()

    def _flush(self) -> None:
        """Fold the buffered gaps into the per-adapter sketches (bounded memory)."""
        from twinbench.reports.sketch import QuantileSketch

        for key, buf in self.itl_buffers.items():
            values = np.concatenate(buf) / 1e9
            sk = self.sketches.get(key)
            if sk is None:
                sk = self.sketches[key] = QuantileSketch(relative_accuracy=0.005)
            sk.add(values)
        self.itl_buffers = {}
        self.itl_buffered = 0

    def finish_sketches(self) -> dict[str, Any]:
        self._flush()
        # footer["sketches"] layout of twinbench.reports: {adapter or "(base)": {"itl": sketch}}
        return {} if self.exact else {k: {"itl": sk} for k, sk in self.sketches.items()}


def engine_for(trace: Trace, config: ServerConfig, profile: Profile, mode: str,
               step_log: list | None) -> Engine:
    if mode not in ("coalesced", "step"):
        raise ValueError(f"mode must be 'coalesced' or 'step', not {mode!r}")
    return Engine(config, profile, coalesce=(mode == "coalesced"),
                  adapter_ranks={a.name: a.rank for a in trace.adapters}, step_log=step_log,
                  emit_tokens=False,
                  prefix_block_tokens=int(trace.meta.get("prefix_block_tokens") or 0)
                  if trace.prefix_flat is not None else 0)


def run_info(engine: Engine, profile: Profile, mode: str, stats: dict, replica=None) -> RunInfo:
    from twinbench.traces.version import TOOL_VERSION

    server = engine.config.to_dict()
    server.update(max_model_len=engine.max_model_len, num_gpu_blocks=engine.num_gpu_blocks,
                  kv_capacity_tokens=(engine.num_gpu_blocks - 1) * engine.bs)
    return RunInfo(backend="twin", version=TOOL_VERSION, server_config=server,
                   profile=profile.summary(),
                   extra={"mode": mode, "vllm_rules": engine.config.vllm_version,
                          "replica": replica, "stats": stats})


@gc_paused()  # the engine's objects form no cycles: collector passes are pure overhead
def simulate(trace: Trace, config: ServerConfig, profile: Profile | str, *,
             mode: str = "coalesced", token_timestamps: str = "exact",
             step_log: list | None = None, horizon_s: float | None = None,
             warmup_requests: int = 0, emit: Callable[[RequestRecord], None] | None = None,
             dispatch_until_s: float | None = None, replica: int | None = None,
             progress: Callable[[float], None] | None = None,
             rows: np.ndarray | None = None) -> SimResult:
    """Replay `trace` on one simulated vLLM server.

    horizon_s: stop the engine there (requests not done are `unfinished`); default: run until
    every request is done. dispatch_until_s: requests arriving at or after it are never sent
    (`cancelled`). emit: receive each record as it finishes instead of keeping them (memory
    stays flat over millions of requests). rows: only these trace rows (multi-replica routing).
    """
    if token_timestamps not in ("exact", "sketch"):
        raise ValueError("token_timestamps must be 'exact' or 'sketch'")
    profile = Profile.load(profile)
    t_wall = time.perf_counter()
    engine = engine_for(trace, config, profile, mode, step_log)
    ids = trace.ids.tolist() if trace.ids is not None else None
    n_total = len(trace)
    order = np.arange(n_total) if rows is None else np.asarray(rows, dtype=np.int64)
    order = order[np.argsort(trace.arrival_s[order], kind="stable")]
    collector = _Collector(trace, engine, ids if ids is not None else _RowIds(), token_timestamps,
                           warmup_requests, replica, emit)
    engine.on_finish = collector
    arrival_ns = np.rint(trace.arrival_s[order] * 1e9).astype(np.int64)
    dispatched = dispatched_count(trace.arrival_s[order], dispatch_until_s)
    horizon_ns = FOREVER_NS if horizon_s is None else int(round(horizon_s * 1e9))
    adapter_names = [a.name for a in trace.adapters]
    has_prefix = trace.prefix_flat is not None and engine.pool.caching
    input_ns = engine.model.input_ns
    ids_of = collector.ids
    pos = 0
    while pos < dispatched:
        end = min(pos + FEED_BATCH, dispatched)
        sel = order[pos:end]  # converted a batch at a time: memory stays flat
        for i, t, p, o, a in zip(sel.tolist(), arrival_ns[pos:end].tolist(),
                                 trace.prompt_tokens[sel].tolist(),
                                 trace.output_tokens[sel].tolist(),
                                 trace.adapter_idx[sel].tolist()):
            engine.submit(ids_of[i], t, p, o, adapter_names[a] if a >= 0 else None,
                          trace.prefix_blocks(i) if has_prefix else None, key=i)
        pos = end
        until = horizon_ns if pos >= dispatched else \
            min(horizon_ns, int(arrival_ns[pos]) + input_ns - 1)
        engine.run(until)
        if progress is not None:
            progress(engine.now_ns / 1e9)
        if until >= horizon_ns:
            break
    engine.run(horizon_ns)
    # whatever is left at the horizon is reported unfinished, never dropped
    for req in engine.leftovers():
        engine.on_finish(req, None, "unfinished")
    for i in order[pos:dispatched].tolist():  # not yet submitted when the horizon came
        _emit_plain(collector, trace, i, "unfinished", "not started by the horizon")
    for i in order[dispatched:].tolist():
        _emit_plain(collector, trace, i, "cancelled", "not dispatched (after --duration)")
    if progress is not None:
        progress(engine.now_ns / 1e9)
    sketches = collector.finish_sketches()
    finish_records(collector.records)
    engine.stats["gpu_loads"] = engine.caches.gpu_loads
    engine.stats["disk_loads"] = engine.caches.disk_loads
    stats = dict(engine.stats, wall_s=time.perf_counter() - t_wall, requests=len(order),
                 simulated_s=engine.now_ns / 1e9)
    if engine.pool.caching:
        stats["prefix_hit_blocks"] = engine.pool.hits
    return SimResult(records=collector.records, info=run_info(engine, profile, mode, stats, replica),
                     stats=stats, sketches=sketches, step_log=step_log)


def dispatched_count(sorted_arrival_s: np.ndarray, dispatch_until_s: float | None) -> int:
    """How many of these arrivals are sent: those before `dispatch_until_s` (`--duration`);
    a row arriving at or after it is not sent, as on the real backend (replay.dispatch)."""
    if dispatch_until_s is None:
        return len(sorted_arrival_s)
    return int(np.searchsorted(sorted_arrival_s, dispatch_until_s, side="left"))


_PENDING = ("pending",)
# A finished request whose record is built after the run (deferred exact mode), in records:
# _PENDING + (collector, row, prompt, requested, output, status, error, run_start, run_len,
# runs), run_len 0 when no tokens, runs [(start step, n)] when preemptions split token steps.


def finish_records(records: list) -> None:
    """Replace every pending tuple in `records` by its RequestRecord, in place (order kept).

    Token times are views into one per-collector array of step times in seconds: the same
    float64 values `times / 1e9` gives per record, without an array and a division each."""
    seconds: dict[int, np.ndarray] = {}
    columns: dict[int, tuple] = {}
    seconds_list: dict[int, list] = {}  # the same floats as Python objects: no NumPy scalars
    for j, p in enumerate(records):
        if type(p) is not tuple or p[0] is not _PENDING[0]:
            continue
        _, col, i, prompt, requested, output, status, error, run_start, run_len, runs = p
        key = id(col)
        sec = seconds.get(key)
        if sec is None:
            sec = seconds[key] = col.step_seconds()
            seconds_list[key] = sec.tolist()
            trace = col.trace
            # whole columns as Python lists: one conversion instead of a NumPy scalar a field
            columns[key] = (trace.arrival_s.tolist(), trace.adapter_idx.tolist(),
                            type(col.ids) is _RowIds)
        arrivals, adapter_idx, row_ids = columns[key]
        a = adapter_idx[i]
        first = last = chunk_times = None
        if runs:
            chunk_times = np.concatenate([sec[s:s + n] for s, n in runs])
            first, last = float(chunk_times[0]), float(chunk_times[-1])
        elif run_len:
            chunk_times = sec[run_start:run_start + run_len]
            sl = seconds_list[key]
            first, last = sl[run_start], sl[run_start + run_len - 1]
        arrival_s = arrivals[i]
        records[j] = RequestRecord(
            id=str(i) if row_ids else col.ids[i],  # default ids: no _RowIds call
            adapter=col.names[a] if a >= 0 else None, replica=col.replica,
            warmup=i < col.warmup, arrival_s=arrival_s, client_queue_s=0.0,
            sent_s=arrival_s, prompt_tokens=prompt, requested_output_tokens=requested,
            output_tokens=output, status=status, error=error, first_token_s=first,
            end_s=last, chunk_times=chunk_times)


class _RowIds:
    """Default request ids: the row number as a string."""

    def __getitem__(self, i: int) -> str:
        return str(i)


def _emit_plain(collector: _Collector, trace: Trace, i: int, status: str, error: str) -> None:
    a = int(trace.adapter_idx[i])
    rec = RequestRecord(
        id=collector.ids[i], adapter=collector.names[a] if a >= 0 else None,
        replica=collector.replica, warmup=i < collector.warmup,
        arrival_s=float(trace.arrival_s[i]), prompt_tokens=int(trace.prompt_tokens[i]),
        requested_output_tokens=int(trace.output_tokens[i]), status=status, error=error,
        sent_s=None if status == "cancelled" else float(trace.arrival_s[i]), output_tokens=0)
    if collector.emit is not None:
        collector.emit(rec)
    else:
        collector.records.append(rec)
