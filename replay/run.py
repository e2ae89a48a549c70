"""Drive one backend over one trace and keep every record (DESIGN §2).

`RunSink` is what backends emit into: it forwards records to a run file (or a list), knows the
run-clock origin, and carries a stop event that SIGINT/SIGTERM set so that a backend can stop
dispatching and close cleanly. Whatever a backend fails to emit is written as `cancelled` /
`unfinished` at the end, so every trace request has exactly one record.
"""
from __future__ import annotations

import asyncio
import signal
import time
from typing import Callable

from twinbench.backends.base import Backend, ReplayOptions, RunInfo
from twinbench.replay import loop as event_loop
from twinbench.reports.records import RequestRecord
from twinbench.reports.runfile import ListSink, RunWriter
from twinbench.traces.core import Trace
from twinbench.traces.version import TOOL_VERSION



class RunSink:
    """Record sink handed to a backend for one run."""

    def __init__(self, target: RunWriter | ListSink, origin_perf_counter_s: float,
                 origin_unix_s: float):
        self.target = target
        self.origin_perf_counter_s = origin_perf_counter_s
        self.origin_unix_s = origin_unix_s
        self.stop = asyncio.Event()  # set on SIGINT/SIGTERM: stop dispatching, drain briefly
        self.seen: set[str] = set()

    def emit(self, record: RequestRecord) -> None:
        if record.id in self.seen:  # a backend bug must not create a second record
            return
        self.seen.add(record.id)
        self.target.emit(record)

    def sample(self, t: float, metrics: dict) -> None:
        self.target.sample(t, metrics)

    def clock(self) -> float:
        """Seconds on the run clock (wall-clock backends)."""
        return time.perf_counter() - self.origin_perf_counter_s


def fill_missing(trace: Trace, sink: RunSink, status: str, options: ReplayOptions) -> int:
    """Emit a record for every trace request the backend did not report."""
    missing = 0
    for i in range(len(trace)):
        rid = trace.request_id(i)
        if rid in sink.seen:
            continue
        missing += 1
        sink.emit(RequestRecord(
            id=rid, adapter=trace.adapter_name(i), arrival_s=float(trace.arrival_s[i]),
            prompt_tokens=int(trace.prompt_tokens[i]),
            requested_output_tokens=int(trace.output_tokens[i]),
            warmup=i < options.warmup_requests, status=status,
            error="not reported by the backend" if status == "unfinished" else "run interrupted"))
    return missing


def header_for(trace: Trace, backend: Backend, options: ReplayOptions, label: str | None,
               origin_unix_s: float, origin_perf_counter_s: float) -> dict:
    return {
        "tool_version": TOOL_VERSION, "label": label, "backend": backend.describe(),
        "trace": trace.identity(), "options": options.to_dict(), "seed": options.seed,
        "origin_unix_s": origin_unix_s, "origin_perf_counter_s": origin_perf_counter_s,
    }


async def _drive(trace: Trace, backend: Backend, options: ReplayOptions, sink: RunSink,
                 on_signal: Callable[[], None] | None) -> tuple[RunInfo | None, str]:
    loop = asyncio.get_running_loop()
    installed = []
    signals_seen = 0

    def _handler() -> None:
        nonlocal signals_seen
        signals_seen += 1
        sink.stop.set()
        if on_signal:
            on_signal()
        if signals_seen > 1:  # a second Ctrl-C: stop waiting for the grace period
            for task in asyncio.all_tasks(loop):
                if task is not asyncio.current_task(loop):
                    task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, _handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread or not supported: no clean-stop on signals
    try:
        info = await backend.replay(trace, options, sink)
        return info, ("interrupted" if sink.stop.is_set() else "complete")
    except asyncio.CancelledError:
        return None, "interrupted"
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def replay_to_file(trace: Trace, backend: Backend, options: ReplayOptions, out: str,
                   force: bool = False, label: str | None = None,
                   flush_every_s: float | None = None) -> tuple[RunInfo | None, str, RunSink]:
    """Replay `trace` on `backend`, writing the run file `out` as records arrive.

    Returns (RunInfo, "complete" | "interrupted", sink). The file is closed with a footer
    in every case, including Ctrl-C and backend crashes.
    """
    prepare = getattr(backend, "prepare", None)
    if prepare is not None:  # pre-run checks first: a user error leaves no run file behind
        prepare(trace, options)
    origin_unix = time.time()
    origin_perf = time.perf_counter()
    header = header_for(trace, backend, options, label, origin_unix, origin_perf)
    if flush_every_s is None:
        flush_every_s = 0.0 if getattr(backend, "realtime", True) else 0.5
    writer = RunWriter(out, header, force=force, flush_every_s=flush_every_s)
    sink = RunSink(writer, origin_perf, origin_unix)
    info: RunInfo | None = None
    status = "interrupted"
    reason = None
    try:
        info, status = event_loop.run(_drive(trace, backend, options, sink, None))
    except KeyboardInterrupt:
        status, reason = "interrupted", "KeyboardInterrupt"
    except BaseException as e:  # keep what was measured, then let the error surface
        status, reason = "interrupted", f"{type(e).__name__}: {e}"
        _finish(trace, sink, writer, options, info, status, reason)
        raise
    _finish(trace, sink, writer, options, info, status, reason)
    return info, status, sink


def _finish(trace: Trace, sink: RunSink, writer: RunWriter, options: ReplayOptions,
            info: RunInfo | None, status: str, reason: str | None) -> None:
    missing = fill_missing(trace, sink, "cancelled" if status != "complete" else "unfinished",
                           options)
    # a wall-clock backend moves the origin to the moment dispatch really started; the
    # header holds the file-open time, so the footer states the origin the records use
    footer = {"missing_filled": missing, "origin_unix_s": sink.origin_unix_s,
              "origin_perf_counter_s": sink.origin_perf_counter_s}
    if info is not None:
        # quantile sketches (sketch mode) summarise the whole run: they belong in the footer
        sketches = info.extra.pop("sketches", None)
        if sketches:
            footer["sketches"] = sketches
        writer.info(info.to_dict())
    if reason:
        footer["reason"] = reason
    writer.close(status, **footer)


def replay_to_list(trace: Trace, backend: Backend, options: ReplayOptions
                   ) -> tuple[list[RequestRecord], RunInfo | None]:
    """Replay into memory (tests, sweeps): records in emission order, plus RunInfo."""
    target = ListSink()
    sink = RunSink(target, time.perf_counter(), time.time())
    info = event_loop.run(backend.replay(trace, options, sink))
    fill_missing(trace, sink, "unfinished", options)
    return target.records, info
