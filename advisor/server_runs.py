"""Sweep points on a real server: start it from a command template, check, replay, stop.

`max_num_seqs` is a launch flag of `vllm serve`, so every sweep point needs its own server
process. The template names it as `{max_num_seqs}` (and may name `{port}`; otherwise the port
is read from `--port`, default 8000). Points run one after another: two servers on one
machine would measure each other.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from twinbench.advisor.twin_runs import KEPT_METRICS, PointResult, saturation_window
from twinbench.traces.core import Trace
from twinbench.traces.errors import TwinbenchError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerTemplate:
    command: str
    ready_timeout_s: float = 600.0
    stop_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if "{max_num_seqs}" not in self.command:
            raise TwinbenchError("--server-cmd: the template must contain {max_num_seqs}, e.g. "
                                 "'vllm serve M --max-num-seqs {max_num_seqs} --port {port}'")
        try:
            self.command.format(max_num_seqs=1, port=1)
        except (KeyError, IndexError, ValueError) as e:
            raise TwinbenchError(f"--server-cmd: bad template placeholder ({e}); only "
                                 "{max_num_seqs} and {port} are filled in") from None

    def render(self, batch: int) -> tuple[list[str], int]:
        port = free_port() if "{port}" in self.command else None
        argv = shlex.split(self.command.format(max_num_seqs=batch, port=port or 0))
        if port is None:
            port = 8000
            for i, a in enumerate(argv):
                if a == "--port" and i + 1 < len(argv):
                    port = int(argv[i + 1])
                elif a.startswith("--port="):
                    port = int(a.split("=", 1)[1])
        return argv, port


class RunningServer:
    """A server process in its own session, so stopping it stops its children too."""

    def __init__(self, argv: list[str], port: int, log_path: str):
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self.log.close()
            raise TwinbenchError(f"--server-cmd: cannot start {argv[0]!r}: {e.strerror}") \
                from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float) -> None:
        from twinbench.backends.vllm_cpu import wait_until_healthy

        outcome = wait_until_healthy(self.url, self.proc, timeout_s, 0.25)
        if outcome == "exited":
            raise TwinbenchError(f"--server-cmd: the server exited with code "
                                 f"{self.proc.returncode} before it was ready "
                                 f"(log: {self.log_path}): {self.tail()}")
        if outcome == "timeout":
            raise TwinbenchError(f"--server-cmd: no healthy /health on port {self.port} after "
                                 f"{timeout_s:g} s (log: {self.log_path})")

    def tail(self, n: int = 3) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").strip().splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.log.close()


def replay_with_samples(trace: Trace, url: str, quiet: bool = True):
    """Replay on the real backend into memory, keeping the scraped /metrics samples."""
    from twinbench.backends.base import ReplayOptions
    from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
    from twinbench.reports.runfile import ListSink
    from twinbench.replay import loop as event_loop
    from twinbench.replay.run import RunSink, fill_missing

    backend = OpenAIBackend(OpenAIConfig(base_url=url, scrape_interval_s=0.5))
    options = ReplayOptions(quiet=quiet)
    target = ListSink()
    sink = RunSink(target, time.perf_counter(), time.time())
    info = event_loop.run(backend.replay(trace, options, sink))
    fill_missing(trace, sink, "unfinished", options)
    return target.records, target.samples, info


def run_server_point(template: ServerTemplate, batch: int, trace: Trace, *,
                     saturated_window: bool, log_dir: str | None = None,
                     quiet: bool = True) -> PointResult:
    from twinbench.reports.metrics import summarize

    argv, port = template.render(batch)
    log_dir = log_dir or tempfile.gettempdir()
    server = RunningServer(argv, port, os.path.join(log_dir, f"advise-server-b{batch}.log"))
    t0 = time.perf_counter()
    try:
        server.wait_ready(template.ready_timeout_s)
        records, samples, info = replay_with_samples(trace, server.url, quiet=quiet)
    finally:
        server.stop(template.stop_timeout_s)
    window = saturation_window(records) if saturated_window else None
    summary = summarize(records, window=window, time_series=False)
    starv = summary.starvation
    starving_adapters = list(starv.starving_adapters) if starv is not None else []
    kv_p99, total = kv_from_samples(samples, info)
    return PointResult(batch, {k: summary.get(k) for k in KEPT_METRICS},
                       bool(starv is not None and (starv.run_starving or starving_adapters)),
                       "" if starv is None else starv.run_reason, starving_adapters,
                       kv_p99, total, time.perf_counter() - t0, {"server": argv[0]})


def kv_from_samples(samples: list, info) -> tuple[float | None, int | None]:
    """p99 of scraped `vllm:kv_cache_usage_perc` (a fraction) × the server's KV blocks."""
    config = getattr(info, "server_config", None) or {}
    cache = config.get("cache_config") or {} if isinstance(config, dict) else {}
    total = cache.get("num_gpu_blocks") if isinstance(cache, dict) else None
    total = int(total) if total else None
    usage = []
    for s in samples:
        m = s[1] if isinstance(s, (tuple, list)) and len(s) == 2 else s
        if isinstance(m, dict) and m.get("kv_usage") is not None:
            usage.append(float(m["kv_usage"]))
    if not usage or total is None:
        return None, total
    return float(np.percentile(np.asarray(usage), 99)) * total, total
