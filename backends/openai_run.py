"""One dispatch of `OpenAIBackend`: this process's share of the schedule, the worker
processes, `/metrics` scraping, progress, and turning attempts into records."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import resource
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, AsyncIterator

import aiohttp
import numpy as np

from twinbench.backends.base import ReplayOptions
from twinbench.backends.openai_plan import RequestPlan
from twinbench.backends.openai_probe import fetch_metrics
from twinbench.backends.openai_stream import OpenAIStreamSender
from twinbench.backends.stream_state import StreamTarget
from twinbench.backends.server_metrics import scrape_loop
from twinbench.replay.dispatch import (Attempt, DispatchStats, Sender, connections_to_warm,
                                      dispatch, to_record)
from twinbench.replay.progress import Progress
from twinbench.replay.workers import WorkerPool, shares
from twinbench.traces.core import Trace
from twinbench.traces.gcpause import frozen_heap

if TYPE_CHECKING:
    from twinbench.backends.openai import OpenAIConfig

START_LEAD_S = 0.02  # origin is set this far ahead of "now", so the first send is not late
CLIENT_ENV = "TWINBENCH_HTTP_CLIENT"  # "aiohttp" forces the fallback client (also in workers)


def stream_client() -> str:
    """The client that streams the requests: `fast` (backends/fast_stream.py, less CPU per
    message) when httptools is importable, `aiohttp` otherwise or when asked for."""
    if os.environ.get(CLIENT_ENV, "").strip().lower() == "aiohttp":
        return "aiohttp"
    return "fast" if importlib.util.find_spec("httptools") is not None else "aiohttp"


def open_session(limit: int | None) -> aiohttp.ClientSession:
    """One session for the run. Open loop: no pool limit (a pool queue would hide latency as
    TTFT); with a concurrency cap the pool is exactly that size."""
    connector = aiohttp.TCPConnector(limit=limit or 0, limit_per_host=0,
                                     keepalive_timeout=60, ttl_dns_cache=None)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=None))


def raise_fd_limit() -> None:
    """Each open request holds a socket; lift the soft file limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class SenderFactory:
    """Picklable recipe for a sender in any process (see `replay.workers`)."""

    config: OpenAIConfig
    plan: RequestPlan
    timeout_s: float
    pool_limit: int | None

    @contextlib.asynccontextmanager
    async def open(self, warm: int = 0) -> AsyncIterator[Sender]:
        """The sender, with `warm` connections opened ahead (see `connections_to_warm`)."""
        raise_fd_limit()
        path = "/v1/chat/completions" if self.config.chat else "/v1/completions"
        target = StreamTarget(url=self.config.base_url + path, headers=self.config.headers(),
                              timeout_s=self.timeout_s, chat=self.config.chat)
        if len(self.plan.trace):
            self.plan.body_of(0)  # first-call costs (NumPy, hashing) before time 0, not in lag
        opener = _fast_sender if stream_client() == "fast" else _aiohttp_sender
        async with opener(target, self.plan, self.pool_limit, warm) as sender:
            with frozen_heap():
                yield sender


@contextlib.asynccontextmanager
async def _fast_sender(target: StreamTarget, plan: RequestPlan,
                       pool_limit: int | None, warm: int) -> AsyncIterator[Sender]:
    from twinbench.backends.fast_stream import FastStreamSender
    from twinbench.backends.http1 import ConnectionPool, Endpoint

    # no pool limit: open loop sends at once, and a concurrency cap already bounds the sends
    pool = ConnectionPool(Endpoint.parse(target.url))
    with contextlib.suppress(OSError):
        await pool.resolve()  # before time 0; a failure shows on each request instead
        await pool.warm(warm, target.timeout_s)
    try:
        yield FastStreamSender(pool, target, plan.body_of, plan.requested_of)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _aiohttp_sender(target: StreamTarget, plan: RequestPlan,
                          pool_limit: int | None, warm: int) -> AsyncIterator[Sender]:
    async with open_session(pool_limit) as session:
        yield OpenAIStreamSender(session, target, plan.body_of, plan.requested_of)


class RunDriver:
    """One dispatch: this process's share, the worker processes, scraping, progress."""

    def __init__(self, backend, trace: Trace, plan: RequestPlan,
                 options: ReplayOptions, sink, stop: asyncio.Event, settings, timeout_s: float,
                 cap: int | None):
        self.backend, self.trace, self.plan, self.options = backend, trace, plan, options
        self.sink, self.stop, self.settings = sink, stop, settings
        self.timeout_s, self.cap = timeout_s, cap
        self.cut_short = 0
        self.samples = 0
        self.worker_failures: list[str] = []
        self.origin = 0.0

    def text_mismatch(self, rows: np.ndarray) -> int:
        return sum(1 for r in rows if int(r) in self.plan.text_counts and
                   self.plan.text_counts[int(r)] != int(self.plan.prompt_len[int(r)]))

    def finish(self, attempt: Attempt) -> None:
        i = attempt.row
        if self.plan.clipped[i]:
            attempt.extra["clipped_from"] = [int(self.trace.prompt_tokens[i]),
                                             int(self.trace.output_tokens[i])]
        if "cut_short" in attempt.extra:
            self.cut_short += 1
        if self.plan.prompt_mode == "text" and i in self.plan.text_counts:
            attempt.extra["prompt_tokens_server_count"] = self.plan.text_counts[i]
        rec = to_record(self.trace, attempt, self.origin, i < self.options.warmup_requests,
                        int(self.plan.prompt_len[i]), int(self.plan.output_len[i]))
        self.sink.emit(rec)
        self.progress.finished(rec.status == "ok")

    async def execute(self, rows: np.ndarray, progress: Progress
                      ) -> tuple[float, DispatchStats]:
        cfg = self.backend.config
        self.progress = progress
        n = cfg.workers
        parts = shares(rows, n)
        per_cap = None if self.cap is None else max(1, self.cap // n)
        factory = SenderFactory(cfg, self.plan, self.timeout_s, per_cap)
        settings = self.settings
        if per_cap is not None:
            settings = replace(settings, max_concurrency=per_cap)
        pool = WorkerPool(factory, parts[1:], self.trace.arrival_s, settings) if n > 1 else None
        self.backend.worker_pids = pool.pids if pool else []
        stats = DispatchStats()
        try:
            async with factory.open(connections_to_warm(parts[0], self.trace.arrival_s,
                                                        per_cap)) as sender:
                if pool:
                    pool.wait_ready()
                self.origin = time.perf_counter() + START_LEAD_S
                self._set_origin()
                if pool:
                    pool.go(self.origin)
                tasks = [asyncio.get_running_loop().create_task(self._scrape())]
                tasks.append(asyncio.get_running_loop().create_task(
                    progress.tick(lambda: stats.sent + (sum(pool.sent) if pool else 0),
                                  stats.lags)))
                if pool:
                    stopper = asyncio.get_running_loop().create_task(self._relay_stop(pool))
                    collect = pool.collect(self.finish, lambda k, lags: stats.lags.extend(lags))
                    await asyncio.gather(
                        dispatch(parts[0], self.trace.arrival_s, sender, self.origin, settings,
                                 self.stop, self.finish, stats), collect)
                    stopper.cancel()
                    self.worker_failures = pool.failures
                    stats.drained_out += pool.totals.get("drained_out", 0)
                    stats.cancelled_in_flight += pool.totals.get("cancelled_in_flight", 0)
                else:
                    await dispatch(parts[0], self.trace.arrival_s, sender, self.origin,
                                   settings, self.stop, self.finish, stats)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            progress.close()
            if pool:
                pool.stop()
                pool.close()
        return self.origin, stats

    def _set_origin(self) -> None:
        """The run clock's 0 is set when dispatch starts (DESIGN §2); the header's origin
        was read when the file was opened, before the server checks, and the info line
        carries this one."""
        if hasattr(self.sink, "origin_perf_counter_s"):
            shift = self.origin - self.sink.origin_perf_counter_s
            self.sink.origin_perf_counter_s = self.origin
            if hasattr(self.sink, "origin_unix_s"):
                self.sink.origin_unix_s += shift

    async def _relay_stop(self, pool) -> None:
        await self.stop.wait()
        pool.stop()

    async def _scrape(self) -> None:
        cfg = self.backend.config
        if cfg.scrape_interval_s <= 0 or self.backend.facts.has_metrics is False:
            return
        done = asyncio.Event()
        async with open_session(2) as session:
            async def fetch():
                return await fetch_metrics(session, cfg.base_url, cfg.headers())

            def emit(t: float, metrics: dict) -> None:
                self.samples += 1
                self.sink.sample(t, metrics)

            try:
                await scrape_loop(fetch, emit, lambda: time.perf_counter() - self.origin,
                                  cfg.scrape_interval_s, done)
            except asyncio.CancelledError:
                pass
