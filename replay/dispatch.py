"""Open-loop dispatch on the wall clock (DESIGN §5), independent of the protocol spoken.

Each trace row is sent at `origin + arrival_s` on `time.perf_counter()` (CLOCK_MONOTONIC,
the same clock in every process of the machine), whether or not earlier requests finished.
A late wake-up sends every row that is due at once, and the lateness stays visible: each
record keeps `sent_s`, so dispatch lag = `sent_s - arrival_s - client_queue_s`.
Optional concurrency cap: a row waits for a slot and the wait is its `client_queue_s`.
Rows of the warm-up are sent like the others and flagged `warmup`. Rows arriving at or after
`duration_s` are not sent. After the last send the run waits at most `drain_limit_s` for
the stragglers. When `stop` is set (SIGINT/SIGTERM) dispatch ends, requests in flight get
`stop_grace_s` to finish, and the rest are recorded as cancelled with what they measured.

A `Sender` does the protocol work: `await sender.send(row, attempt)` fills an `Attempt`.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import numpy as np

from twinbench.reports.records import RequestRecord
from twinbench.traces.core import Trace


@dataclass
class Attempt:
    """What one request measured; times are raw `perf_counter` readings."""

    row: int
    queue_start: float = 0.0
    queue_s: float = 0.0
    sent: float | None = None
    stamps: list[float] = field(default_factory=list)   # one per token-bearing message
    tokens: list[int] = field(default_factory=list)     # tokens carried by each message
    output_tokens: int | None = None                    # server usage, when given
    status: str = "unfinished"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    reported: bool = False  # finish() was called for it


class Sender(Protocol):
    """May also have `begin(row, attempt)`: do at once what can be done without waiting (stamp
    `sent`, write the request) and return the awaitable that does the rest. The dispatcher
    then calls it from its timer (without a concurrency cap)."""

    async def send(self, row: int, attempt: Attempt) -> None:
        """Send trace row `row`; fill `attempt` (status, stamps, ...) and return."""
        ...


@dataclass
class DispatchSettings:
    warmup_requests: int = 0
    duration_s: float | None = None
    drain_limit_s: float = 600.0
    max_concurrency: int | None = None
    stop_grace_s: float = 2.0


def to_record(trace: Trace, attempt: Attempt, origin: float, warmup: bool,
              prompt_tokens: int | None = None, output_tokens: int | None = None
              ) -> RequestRecord:
    """The run-clock record of one attempt (`prompt_tokens`/`output_tokens` override the
    trace's lengths when the request was clipped to the server's max_model_len)."""
    i = attempt.row
    stamps = np.asarray(attempt.stamps, dtype=np.float64) - origin
    has_chunks = attempt.sent is not None
    return RequestRecord(
        id=trace.request_id(i), adapter=trace.adapter_name(i),
        arrival_s=float(trace.arrival_s[i]),
        prompt_tokens=int(trace.prompt_tokens[i]) if prompt_tokens is None else prompt_tokens,
        requested_output_tokens=int(trace.output_tokens[i]) if output_tokens is None
        else output_tokens,
        status=attempt.status, warmup=warmup, client_queue_s=attempt.queue_s,
        sent_s=None if attempt.sent is None else attempt.sent - origin,
        first_token_s=float(stamps[0]) if len(stamps) else None,
        end_s=float(stamps[-1]) if len(stamps) else None,
        output_tokens=attempt.output_tokens, error=attempt.error,
        chunk_times=stamps if has_chunks else None,
        chunk_tokens=np.asarray(attempt.tokens, dtype=np.int32) if has_chunks else None,
        extra=dict(attempt.extra),
    )


@dataclass
class DispatchStats:
    sent: int = 0
    finished: int = 0
    failed: int = 0
    not_sent_after_duration: int = 0
    drained_out: int = 0
    cancelled_in_flight: int = 0
    lags: list[float] = field(default_factory=list)  # recent dispatch lags (s), for progress


async def dispatch(rows: np.ndarray, arrival_s: np.ndarray, sender: Sender, origin: float,
                   settings: DispatchSettings, stop: asyncio.Event,
                   finish: Callable[[Attempt], None], stats: DispatchStats) -> None:
    """Send `rows` (trace row numbers, by arrival) on schedule; `finish(attempt)` is called
    exactly once per row that was sent or is abandoned in flight.

    Rows not sent (after `duration_s`, or after a stop) are reported by the caller.
    """
    cap = asyncio.Semaphore(settings.max_concurrency) if settings.max_concurrency else None
    in_flight: dict[int, tuple[asyncio.Task, Attempt]] = {}
    loop = asyncio.get_running_loop()

    async def one(attempt: Attempt) -> None:
        try:
            if cap is not None:
                attempt.queue_start = max(time.perf_counter(), origin +
                                          float(arrival_s[attempt.row]))
                await cap.acquire()
                attempt.queue_s = max(0.0, time.perf_counter() - attempt.queue_start)
                try:
                    await sender.send(attempt.row, attempt)
                finally:
                    cap.release()
            else:
                await sender.send(attempt.row, attempt)
        finally:
            attempt.done = True

    def report(attempt: Attempt) -> None:
        if not attempt.reported:
            attempt.reported = True
            stats.finished += 1
            finish(attempt)

    def on_done(task: asyncio.Task, attempt: Attempt) -> None:
        in_flight.pop(attempt.row, None)
        if task.cancelled() or attempt.reported:
            return  # the canceller reports it
        exc = task.exception()
        if exc is not None and attempt.status in ("unfinished", "ok"):
            attempt.status, attempt.error = "error", f"client error: {type(exc).__name__}: {exc}"
        stats.failed += attempt.status != "ok"
        if attempt.sent is not None:
            lag = attempt.sent - origin - float(arrival_s[attempt.row]) - attempt.queue_s
            stats.lags.append(lag)
        report(attempt)

    # a sender that can write at once (`begin`) is started from the timer callback itself
    begin = getattr(sender, "begin", None) if cap is None else None

    def start(row: int) -> None:
        attempt = Attempt(row=row)
        if begin is not None:
            try:
                work = _finally_done(begin(row, attempt), attempt)
            except Exception as e:  # recorded by on_done as a client error, like a failed send
                work = _finally_done(_raise(e), attempt)
        else:
            work = one(attempt)
        task = loop.create_task(work)
        in_flight[row] = (task, attempt)
        task.add_done_callback(lambda t, a=attempt: on_done(t, a))
        stats.sent += 1

    async def schedule() -> None:
        # a chain of timer callbacks rather than `await asyncio.sleep`: a sleeping task wakes
        # one loop turn after its timer fires, and each turn can hold a dozen stream reads
        n = len(rows)
        k = 0
        all_sent = loop.create_future()
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            nonlocal k, timer
            try:
                now = time.perf_counter()
                # send everything due by now (a late wake-up shows as lag, not a hidden burst)
                while k < n and origin + float(arrival_s[rows[k]]) <= now:
                    start(int(rows[k]))
                    k += 1
                if k < n:
                    delay = origin + float(arrival_s[rows[k]]) - time.perf_counter()
                    timer = loop.call_at(loop.time() + delay, fire)
                elif not all_sent.done():
                    all_sent.set_result(None)
            except BaseException as e:  # never die silently inside a callback
                if not all_sent.done():
                    all_sent.set_exception(e)

        fire()
        try:
            await all_sent
        finally:
            if timer is not None:
                timer.cancel()

    scheduler = loop.create_task(schedule())
    stopper = loop.create_task(stop.wait())
    await asyncio.wait({scheduler, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        scheduler.cancel()
        limit = settings.stop_grace_s
    else:
        last = float(arrival_s[rows[-1]]) if len(rows) else 0.0
        limit = max(0.0, origin + last + settings.drain_limit_s - time.perf_counter())
    try:
        await asyncio.gather(scheduler, return_exceptions=True)
        pending = [t for t, _ in in_flight.values()]
        if pending:
            waiter = loop.create_task(asyncio.wait(pending, timeout=limit))
            if not stop.is_set():  # a stop during the drain shortens it to the grace period
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set() and not waiter.done():
                    await asyncio.wait({waiter}, timeout=settings.stop_grace_s)
            else:
                await asyncio.wait({waiter})
            waiter.cancel()
    finally:
        stopper.cancel()
        await asyncio.sleep(0)  # let done-callbacks of tasks that just finished run
        leftovers = [(t, a) for t, a in in_flight.values() if not t.done()]
        in_flight.clear()
        for task, attempt in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*(t for t, _ in leftovers), return_exceptions=True)
        for task, attempt in leftovers:
            if attempt.reported:
                continue
            if stop.is_set():
                attempt.status, attempt.error = "cancelled", "run interrupted while in flight"
                stats.cancelled_in_flight += 1
            else:
                attempt.status = "unfinished"
                attempt.error = ("not finished within the drain limit "
                                 f"({settings.drain_limit_s:g} s)")
                stats.drained_out += 1
            stats.failed += 1
            report(attempt)


async def _finally_done(work: Awaitable[None], attempt: Attempt) -> None:
    try:
        await work
    finally:
        attempt.done = True


async def _raise(error: Exception) -> None:
    raise error


def rows_to_send(trace: Trace, duration_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows sent in arrival order, rows cut by `--duration`)."""
    order = np.argsort(trace.arrival_s, kind="stable")
    if duration_s is None:
        return order, np.empty(0, dtype=np.int64)
    keep = trace.arrival_s[order] < duration_s
    return order[keep], order[~keep]


WARM_WINDOW_S = 1.0   # connections opened ahead: one per request of the first second...
WARM_MAX = 512        # ...at most this many


def connections_to_warm(rows: np.ndarray, arrival_s: np.ndarray, cap: int | None) -> int:
    """How many connections a share of the trace (`rows`, in arrival order) opens ahead: one
    per request due in its first `WARM_WINDOW_S`, at most `WARM_MAX` or the concurrency cap.
    Those requests find an idle connection instead of opening one on the run's clock."""
    if not len(rows):
        return 0
    times = arrival_s[rows]
    n = int(np.searchsorted(times, times[0] + WARM_WINDOW_S, side="right"))
    return min(n, WARM_MAX, cap or WARM_MAX)
