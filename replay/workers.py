"""`--workers N`: N processes share one schedule; only the parent writes the run file.

The parent dispatches row shares itself and starts N-1 child processes (spawned: a fresh
interpreter, no inherited event loop), each with its own event loop and HTTP session. All use
the same origin on `perf_counter` (CLOCK_MONOTONIC, one clock for the whole machine), so
"send at origin + arrival" means the same instant in every process. Children send back each
finished attempt (raw perf_counter times) over a pipe; the parent turns it into a record.
Children ignore SIGINT (a terminal sends it to the whole process group): the parent decides
when to stop and tells them.

Messages, child -> parent: ("ready",), ("attempt", Attempt), ("progress", sent, lags),
("done", counters), ("failed", text). Parent -> child: ("go", origin), ("stop",).
"""
from __future__ import annotations

import asyncio
import multiprocessing
import signal
import time
from contextlib import AbstractAsyncContextManager
from typing import Callable, Protocol

import numpy as np

from twinbench.replay import loop as event_loop
from twinbench.replay.dispatch import (Attempt, DispatchSettings, DispatchStats, Sender,
                                      connections_to_warm, dispatch)

READY_TIMEOUT_S = 60.0


class SenderFactory(Protocol):
    """Picklable; `open(warm)` makes the sender (and its HTTP session) inside a process,
    with `warm` connections opened ahead where the protocol has connections."""

    def open(self, warm: int = 0) -> AbstractAsyncContextManager[Sender]: ...


def shares(rows: np.ndarray, n: int) -> list[np.ndarray]:
    """Round-robin split of the schedule: each process gets every n-th request."""
    return [rows[k::n] for k in range(n)]


def _child_main(conn, factory: SenderFactory, rows: np.ndarray, arrival_s: np.ndarray,
                settings: DispatchSettings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        event_loop.run(_child_run(conn, factory, rows, arrival_s, settings))
    except Exception as e:  # report, do not die silently: the parent records the rows
        try:
            conn.send(("failed", f"{type(e).__name__}: {e}"))
        except OSError:
            pass


async def _child_run(conn, factory: SenderFactory, rows: np.ndarray, arrival_s: np.ndarray,
                     settings: DispatchSettings) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except EOFError:  # parent gone: stop
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("stop",))

    loop.add_reader(conn.fileno(), readable)
    stop = asyncio.Event()
    stats = DispatchStats()
    async with factory.open(connections_to_warm(rows, arrival_s,
                                                settings.max_concurrency)) as sender:
        conn.send(("ready",))
        msg = await inbox.get()
        if msg[0] != "go":
            conn.send(("done",))
            return
        origin = float(msg[1])

        async def watch() -> None:
            while True:
                m = await inbox.get()
                if m[0] == "stop":
                    stop.set()
                    return

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.25)
                lags, stats.lags = stats.lags, []
                conn.send(("progress", stats.sent, lags))

        watcher, ticker = loop.create_task(watch()), loop.create_task(tick())
        await dispatch(rows, arrival_s, sender, origin, settings, stop,
                       lambda a: conn.send(("attempt", a)), stats)
        watcher.cancel()
        ticker.cancel()
    loop.remove_reader(conn.fileno())
    conn.send(("progress", stats.sent, stats.lags))
    conn.send(("done", {"drained_out": stats.drained_out,
                        "cancelled_in_flight": stats.cancelled_in_flight,
                        "not_sent": len(rows) - stats.sent}))


class WorkerPool:
    """The N-1 child processes of a multi-worker run, seen from the parent."""

    def __init__(self, factory: SenderFactory, child_rows: list[np.ndarray],
                 arrival_s: np.ndarray, settings: DispatchSettings):
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        self.rows = child_rows
        self.sent = [0] * len(child_rows)
        self.failures: list[str] = []
        self.totals: dict[str, int] = {}   # summed "done" counters of the children
        for rows in child_rows:
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=_child_main, daemon=True,
                            args=(child_end, factory, rows, arrival_s, settings))
            p.start()
            child_end.close()
            self.conns.append(parent_end)
            self.procs.append(p)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_ready(self) -> None:
        """Block until every child has its session open (before the origin is set)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        for conn, p in zip(self.conns, self.procs):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"worker process {p.pid} did not start")
            msg = conn.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"worker process {p.pid} failed: {msg[-1]}")

    def go(self, origin: float) -> None:
        for conn in self.conns:
            conn.send(("go", origin))

    def stop(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass

    async def collect(self, on_attempt: Callable[[Attempt], None],
                      on_progress: Callable[[int, list[float]], None]) -> None:
        """Receive attempts until every child is done (or has died)."""
        loop = asyncio.get_running_loop()
        remaining = set(range(len(self.conns)))
        all_done = asyncio.Event()

        def readable(k: int) -> None:
            conn = self.conns[k]
            try:
                while conn.poll():
                    msg = conn.recv()
                    if msg[0] == "attempt":
                        on_attempt(msg[1])
                    elif msg[0] == "progress":
                        on_progress(k, msg[2])
                        self.sent[k] = msg[1]
                    elif msg[0] in ("done", "failed"):
                        if msg[0] == "failed":
                            self.failures.append(f"worker {self.procs[k].pid}: {msg[1]}")
                        elif len(msg) > 1:
                            for key, v in msg[1].items():
                                self.totals[key] = self.totals.get(key, 0) + v
                        raise EOFError
            except (EOFError, OSError):
                loop.remove_reader(conn.fileno())
                remaining.discard(k)
                if not remaining:
                    all_done.set()

        for k, conn in enumerate(self.conns):
            loop.add_reader(conn.fileno(), readable, k)
        if not remaining:
            return
        try:
            await all_done.wait()
        finally:
            for k in list(remaining):
                loop.remove_reader(self.conns[k].fileno())

    def close(self) -> None:
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        for conn in self.conns:
            conn.close()
