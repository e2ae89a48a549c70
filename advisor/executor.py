"""Where sweep points run: any `concurrent.futures.Executor`.

`open_executor(spec)` gives a local process pool by default, `serial` (in this process, for
debugging and tiny sweeps), `threads`, or `dask://HOST:PORT` for a Dask distributed cluster
(extra `cluster`). `map_points` submits every point, shows a tqdm bar over finished points,
and returns results in input order, so the choice of executor never changes an answer.
"""
from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import (Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor,
                                as_completed)
from typing import Any, Callable, Iterator, Sequence

from twinbench.traces.errors import TwinbenchError


class SerialExecutor(Executor):
    """Runs each call at submit time in the calling process (no pickling, easy tracebacks)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # delivered through the future, like the other executors
            future.set_exception(e)
        return future


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))


@contextlib.contextmanager
def open_executor(spec: str | None = None, workers: int | None = None,
                  connect_timeout_s: float = 10.0) -> Iterator[Executor]:
    """An executor for `--executor SPEC`: process (default), serial, threads, dask://HOST:PORT."""
    spec = (spec or "process").strip()
    if spec == "process":
        with ProcessPoolExecutor(max_workers=workers or default_workers()) as ex:
            yield ex
    elif spec == "serial":
        yield SerialExecutor()
    elif spec == "threads":
        with ThreadPoolExecutor(max_workers=workers or default_workers()) as ex:
            yield ex
    elif spec.startswith(("dask://", "tcp://")):
        try:
            from distributed import Client
        except ImportError:
            raise TwinbenchError("--executor dask://...: Dask is not installed; "
                                 "install the extra: pip install 'twinbench[cluster]'") from None
        address = "tcp://" + spec.split("://", 1)[1]
        try:
            client = Client(address, timeout=f"{connect_timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise TwinbenchError(f"--executor {spec}: cannot reach the Dask scheduler ({e})") \
                from None
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
    else:
        raise TwinbenchError(f"--executor {spec!r}: expected process, serial, threads "
                             "or dask://HOST:PORT")


def show_progress(quiet: bool = False) -> bool:
    return not quiet and sys.stderr.isatty()


def map_points(fn: Callable, items: Sequence, executor: Executor, *, desc: str = "sweep",
               progress: bool = False) -> list:
    """`[fn(x) for x in items]` on the executor, in input order, with a progress bar."""
    if not items:
        return []
    futures = {executor.submit(fn, item): i for i, item in enumerate(items)}
    results: list = [None] * len(items)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), desc=desc, unit="pt", file=sys.stderr, leave=False)
    try:
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if bar is not None:
                bar.update(1)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        if bar is not None:
            bar.close()
    return results
