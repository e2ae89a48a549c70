"""Where a replay's dispatch lag comes from: the client's event loop, instrumented.

    python bench/lag_explain.py [--rate 500] [--seconds 6] [--top 15]

Runs one open-loop replay the way `bench/client_overhead.py` does (one worker, the served
twin on core 1, the client on core 0, 64-token streams) with the client's event loop
instrumented. For every loop iteration it records the time spent in `epoll_wait`, the time
running callbacks, the ready sockets handled and the thread's CPU time. For the largest
dispatch lags it then prints what the loop did between the request's due time and its send:

    iterations  loop iterations overlapping that window
    ready       sockets handled in them
    in epoll    wall time waiting in epoll_wait (past the due time: the kernel woke us late)
    callbacks   wall time running callbacks
    on CPU      how much of the window the client's thread actually ran

A window with `on CPU` well below its length is time the process was not running (another
task, the hypervisor, interrupts); one with `on CPU` close to it is the client's own work.
Also prints the steal and softirq time of core 0 over the run (/proc/stat).

Relies on CPython's asyncio internals (`BaseEventLoop._run_once`); a diagnostic, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client_overhead as co  # noqa: E402  (the same server, trace and pinning)


# ---- the client process: instrument, replay, save ---------------------------------------
def instrumented_client(url: str, rate: float, seconds: float, out: str) -> None:
    import asyncio.base_events as base_events

    import twinbench.backends.openai_run as openai_run
    from twinbench.replay import loop as replay_loop

    iterations: list[tuple[float, float, int, float, float]] = []
    run_once = base_events.BaseEventLoop._run_once
    select = replay_loop.BoundedEpollSelector.select
    last_select = [0.0, 0]

    def timed_select(self, timeout=None):
        ready = select(self, timeout)
        last_select[0], last_select[1] = time.perf_counter(), len(ready)
        return ready

    def timed_run_once(self):
        t0, cpu0 = time.perf_counter(), time.thread_time()
        last_select[0], last_select[1] = t0, 0
        run_once(self)
        # (start, end of epoll_wait, ready sockets, end, CPU seconds of the iteration)
        iterations.append((t0, last_select[0], last_select[1], time.perf_counter(),
                           time.thread_time() - cpu0))

    origin: dict[str, float] = {}
    dispatch = openai_run.dispatch

    async def dispatch_noting_origin(rows, arrival_s, sender, t0, *args, **kwargs):
        origin["perf_counter"] = t0
        return await dispatch(rows, arrival_s, sender, t0, *args, **kwargs)

    base_events.BaseEventLoop._run_once = timed_run_once
    replay_loop.BoundedEpollSelector.select = timed_select
    openai_run.dispatch = dispatch_noting_origin
    co.client_run(url, rate, seconds, 1, out)
    np.save(out + ".loop.npy", np.array(iterations))
    Path(out + ".origin.json").write_text(json.dumps(origin))


# ---- the driver ---------------------------------------------------------------------------
def cpu0_counters() -> tuple[int, int]:
    """(steal, softirq) ticks of CPU 0."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu0 "):
            f = [int(x) for x in line.split()[1:]]
            return f[7], f[6]
    return 0, 0


def explain(out: str, top: int) -> None:
    from twinbench.reports.runfile import read_run

    loop = np.load(out + ".loop.npy")
    origin = json.loads(Path(out + ".origin.json").read_text())["perf_counter"]
    start, polled, ready, end, cpu = loop.T
    recs = [r for r in read_run(out).records if r.sent_s is not None]
    due = np.array([origin + r.arrival_s + r.client_queue_s for r in recs])
    sent = np.array([origin + r.sent_s for r in recs])
    lag = (sent - due) * 1e3
    print(f"{len(lag)} requests: dispatch lag p50 {np.percentile(lag, 50):.2f} ms, "
          f"p99 {np.percentile(lag, 99):.2f} ms, max {lag.max():.2f} ms; "
          f"{len(start)} loop iterations")
    print(f"{'lag ms':>8} {'iterations':>10} {'ready':>6} {'in epoll ms':>12} "
          f"{'callbacks ms':>13} {'on CPU ms':>10}")
    off_cpu = total = 0.0
    for i in np.argsort(-lag)[:top]:
        lo, hi = due[i], sent[i]
        k = np.nonzero((end > lo) & (start < hi))[0]
        overlap = lambda a, b: np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0, None)  # noqa
        in_epoll = overlap(start[k], polled[k]).sum()
        in_callbacks = overlap(polled[k], end[k]).sum()
        # the iteration's CPU time, in proportion to the part of it inside the window
        share = overlap(start[k], end[k]) / np.maximum(end[k] - start[k], 1e-9)
        on_cpu = float((cpu[k] * share).sum())
        off_cpu += max(0.0, (hi - lo) - on_cpu)
        total += hi - lo
        print(f"{lag[i]:8.2f} {len(k):10d} {int(ready[k].sum()):6d} {in_epoll * 1e3:12.2f} "
              f"{in_callbacks * 1e3:13.2f} {on_cpu * 1e3:10.2f}")
    print(f"the {top} largest lags: {100 * off_cpu / max(total, 1e-9):.0f} % of their time "
          "the client's thread was not on a CPU")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, rate, seconds, out = sys.argv[2:6]
        instrumented_client(url, float(rate), float(seconds), out)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=6.0, help="trace length")
    ap.add_argument("--top", type=int, default=15, help="largest lags to explain")
    ap.add_argument("--profile", default="opt-1.3b-h100")
    args = ap.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.top <= 0:
        ap.error("--rate, --seconds and --top must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.jsonl")
        server, url = co.start_server(args.profile, 1.0)
        try:
            steal0, soft0 = cpu0_counters()
            subprocess.run([*co.PIN_CLIENT, sys.executable, __file__, "--client", url,
                            str(args.rate), str(args.seconds), out], check=True)
            steal1, soft1 = cpu0_counters()
        finally:
            server.terminate()
            server.wait(10)
        tick = os.sysconf("SC_CLK_TCK")
        print(f"{args.rate:g} req/s for {args.seconds:g} s against twinbench serve; core 0 "
              f"over the client's run: steal {(steal1 - steal0) / tick:.2f} s, softirq "
              f"{(soft1 - soft0) / tick:.2f} s")
        explain(out, args.top)


if __name__ == "__main__":
    main()
