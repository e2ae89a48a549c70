"""How much the real backend's client costs, and where it stops keeping up.

Open-loop replays (Poisson arrivals, 128-token id prompts, 64-token streams) against
`twinbench serve` at 100, 250, 500, 1000 and 2000 req/s, with one worker and with
`--workers 2`. Prints per run: dispatch lag p50/p99/max (sent - arrival - client queue),
achieved send rate, requests ok, CPU of client and server (share of one core), the
client's CPU per SSE message received (us/msg: what bounds the rate one process can take) and
how late tokens arrive against the served twin's own schedule (`twinbench serve`'s wall-clock
agreement, with the client's reading delay in it).

Pinning (2 cores): the server runs under `nice -n -10 taskset -c 1`, the client's main process
under `nice -n -10 taskset -c 0`; with 2 workers the spawned worker process is moved to core 1 with
`sched_setaffinity` once it appears (so it shares core 1 with the server: a 2-core machine
has no third core). Before the runs, `--sse` compares SSE parsers on a vLLM-shaped stream.

    python bench/client_overhead.py [--seconds 6] [--rates 100,250,500,1000,2000]
        [--workers 1,2] [--profile opt-1.3b-h100] [--speed 1] [--sse] [--keep DIR]
        [--client fast|aiohttp]

`--client` picks the stream client (backends/openai_run.py `stream_client`); the default is
the one a replay uses.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOKENS_OUT = 64
TOKENS_IN = 128
# Both get a higher CPU priority than other work on the (shared) machine, so the figures
# measure the client, not a neighbour's test run.
PIN_SERVER = ["nice", "-n", "-10", "taskset", "-c", "1"]
PIN_CLIENT = ["nice", "-n", "-10", "taskset", "-c", "0"]


# ---- SSE parser comparison ------------------------------------------------------------------
def sse_stream(n_msgs: int) -> bytes:
    parts = []
    for k in range(n_msgs):
        msg = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "text": f" tok{k}", "logprobs": None,
                            "finish_reason": None, "stop_reason": None}], "usage": None}
        parts.append(b"data: " + json.dumps(msg).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def network_chunks(raw: bytes, rng: random.Random) -> list[bytes]:
    """Reads as a socket delivers them: mostly one message, sometimes split or merged."""
    out, i = [], 0
    while i < len(raw):
        step = rng.choice([60, 120, 240, 250, 260, 500, 4096])
        out.append(raw[i:i + step])
        i += step
    return out


def bench_sse() -> None:
    import asyncio

    from twinbench.backends.sse import SSEParser

    rng = random.Random(0)
    raw = sse_stream(64)
    chunks_list = [network_chunks(raw, rng) for _ in range(300)]
    n_msgs = 65 * len(chunks_list)

    def ours() -> int:
        count = 0
        for chunks in chunks_list:
            p = SSEParser()
            for c in chunks:
                for _, data in p.feed(c):
                    if data != b"[DONE]":
                        json.loads(data)
                    count += 1
        return count

    results = {"twinbench SSEParser + json.loads": ours}
    try:
        from openai._streaming import SSEDecoder  # the SDK's own (private) decoder

        async def sdk_run() -> int:
            count = 0
            for chunks in chunks_list:
                async def gen(cs=chunks):
                    for c in cs:
                        yield c
                async for sse in SSEDecoder().aiter_bytes(gen()):
                    if sse.data != "[DONE]":
                        json.loads(sse.data)
                    count += 1
            return count

        results["openai._streaming.SSEDecoder + json.loads"] = lambda: asyncio.run(sdk_run())
    except ImportError:
        pass
    print(f"SSE parsing: {n_msgs} vLLM-shaped messages in network-sized reads")
    for name, fn in results.items():
        fn()
        t = time.perf_counter()
        count = fn()
        dt = time.perf_counter() - t
        print(f"  {name:45s} {1e6 * dt / count:6.2f} us/message ({count} messages)")


# ---- the machine's own scheduling noise: the dispatcher with no HTTP at all ----------------
def bench_noop(rate: float, seconds: float = 3.0) -> None:
    import asyncio

    from twinbench.replay.dispatch import DispatchSettings, DispatchStats, dispatch

    class NoHTTP:
        async def send(self, row, attempt):
            attempt.sent = time.perf_counter()
            await asyncio.sleep(0.3)
            attempt.status = "ok"

    async def go() -> np.ndarray:
        n = int(rate * seconds)
        arrival = np.cumsum(np.random.default_rng(1).exponential(1.0 / rate, size=n))
        origin = time.perf_counter() + 0.02
        done: list = []
        await dispatch(np.arange(n), arrival, NoHTTP(), origin, DispatchSettings(),
                       asyncio.Event(), done.append, DispatchStats())
        return np.array([a.sent - origin - arrival[a.row] for a in done]) * 1e3

    lag = asyncio.run(go())
    print(f"dispatcher alone (no HTTP), {rate:g} req/s on this machine now: lag p50 "
          f"{np.percentile(lag, 50):.2f} ms, p99 {np.percentile(lag, 99):.2f} ms, "
          f"max {lag.max():.1f} ms")


# ---- one client run (in its own process) ----------------------------------------------------
def client_run(url: str, rate: float, seconds: float, workers: int, out: str) -> None:
    from twinbench.backends.base import ReplayOptions
    from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
    from twinbench.replay.run import replay_to_file
    from twinbench.traces.core import Trace

    n = int(rate * seconds)
    gaps = np.random.default_rng(1).exponential(1.0 / rate, size=n)
    trace = Trace(arrival_s=np.cumsum(gaps) - gaps[0], adapter_idx=np.full(n, -1),
                  prompt_tokens=np.full(n, TOKENS_IN), output_tokens=np.full(n, TOKENS_OUT))
    backend = OpenAIBackend(OpenAIConfig(base_url=url, workers=workers, scrape_interval_s=1.0,
                                         request_timeout_s=60))
    backend.prepare(trace, ReplayOptions(quiet=True))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    replay_to_file(trace, backend, ReplayOptions(quiet=True, drain_limit_s=30), out, force=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out + ".cpu.json", "w") as f:
        json.dump({"wall_s": wall,
                   "main_cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
                   "workers_cpu_s": kids.ru_utime + kids.ru_stime}, f)


# ---- the driver -----------------------------------------------------------------------------
def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(profile: str, speed: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("twinbench")
    cmd = [*PIN_SERVER, str(exe), "serve", "--profile", profile, "--port", str(port),
           "--speed", str(speed), "--max-num-seqs", "1024", "--max-num-batched-tokens", "16384",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import urllib.request
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"twinbench serve did not start: {proc.stderr.read().decode()[-500:]}")


def pin_children(pid: int, core: int, until: float) -> list[int]:
    """Move the client's worker processes to `core` as soon as they exist."""
    pinned: list[int] = []
    while time.monotonic() < until:
        kids = Path(f"/proc/{pid}/task/{pid}/children")
        ids = [int(x) for x in kids.read_text().split()] if kids.exists() else []
        for k in ids:
            if k not in pinned:
                try:
                    os.sched_setaffinity(k, {core})
                    pinned.append(k)
                except OSError:
                    pass
        if pinned:
            return pinned
        time.sleep(0.02)
    return pinned


def delivery_lateness_ms(records, speed: float) -> np.ndarray:
    """How late each token reached the client against the served twin's own schedule: its
    receive time minus its simulated time (each chunk's `extra.twin.chunk_times_ns` / speed),
    less the smallest such difference of the twin's epoch (the epoch's origin is not known to
    the client). Server stalls (a full garbage collection, a busy loop) and a client that reads
    late both show here: it is the wall-clock agreement of `twinbench serve`."""
    by_epoch: dict[int, list[np.ndarray]] = {}
    for r in records:
        tw = (r.extra or {}).get("twin") or {}
        sim = tw.get("chunk_times_ns")
        if r.status != "ok" or r.chunk_times is None or not sim or len(sim) != len(r.chunk_times):
            continue
        by_epoch.setdefault(tw.get("epoch", 0), []).append(
            np.asarray(r.chunk_times) - np.asarray(sim, dtype=np.float64) / 1e9 / speed)
    parts = [np.concatenate(v) for v in by_epoch.values()]
    return np.concatenate([p - p.min() for p in parts]) * 1e3 if parts else np.empty(0)


def one(rate: float, workers: int, args, tmp: str) -> dict:
    server, url = start_server(args.profile, args.speed)
    try:
        out = os.path.join(tmp, f"run-{rate:g}-{workers}.jsonl")
        s0 = proc_cpu_s(server.pid)
        cmd = [*PIN_CLIENT, sys.executable, __file__, "--client", url, str(rate),
               str(args.seconds), str(workers), out]
        client = subprocess.Popen(cmd)
        if workers > 1:
            pin_children(client.pid, 1, time.monotonic() + 20)
        client.wait()
        s1 = proc_cpu_s(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    from twinbench.reports.runfile import read_run

    run = read_run(out)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        os.replace(out, os.path.join(args.keep, os.path.basename(out)))
    cpu = json.loads(Path(out + ".cpu.json").read_text())
    errors: dict[str, int] = {}
    for r in run.records:
        if r.status != "ok":
            key = f"{r.status}: {(r.error or '')[:40]}"
            errors[key] = errors.get(key, 0) + 1
    recs = [r for r in run.records if r.sent_s is not None]
    lag = np.array([r.sent_s - r.arrival_s - r.client_queue_s for r in recs]) * 1e3
    sent = np.sort([r.sent_s for r in recs])
    ok = sum(r.status == "ok" for r in run.records)
    wall = cpu["wall_s"]
    messages = sum(0 if r.chunk_times is None else len(r.chunk_times) + 1 for r in run.records)
    late = delivery_lateness_ms(run.records, args.speed)
    return {"rate": rate, "workers": workers, "requests": len(run.records), "ok": ok,
            "lag_p50_ms": float(np.percentile(lag, 50)),
            "lag_p99_ms": float(np.percentile(lag, 99)),
            "lag_max_ms": float(lag.max()),
            "achieved_rate": (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 else 0.0,
            "client_cpu": (cpu["main_cpu_s"] + cpu["workers_cpu_s"]) / wall,
            "client_main_cpu": cpu["main_cpu_s"] / wall,
            "client_us_per_msg":
                1e6 * (cpu["main_cpu_s"] + cpu["workers_cpu_s"]) / max(1, messages),
            "server_cpu": (s1 - s0) / wall, "wall_s": wall,
            "late_p50_ms": float(np.percentile(late, 50)) if len(late) else float("nan"),
            "late_p99_ms": float(np.percentile(late, 99)) if len(late) else float("nan"),
            "late_max_ms": float(late.max()) if len(late) else float("nan"),
            "top_error": max(errors.items(), key=lambda kv: kv[1]) if errors else None}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--noop":
        bench_noop(float(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, rate, seconds, workers, out = sys.argv[2:7]
        client_run(url, float(rate), float(seconds), int(workers), out)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="trace length per run")
    ap.add_argument("--rates", default="100,250,500,1000,2000")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--profile", default="opt-1.3b-h100")
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--sse", action="store_true", help="also compare SSE parsers first")
    ap.add_argument("--keep", metavar="DIR", help="keep the run files in DIR")
    ap.add_argument("--client", choices=["fast", "aiohttp"],
                    help="stream client of the replays (default: the replay's own choice)")
    args = ap.parse_args()
    from twinbench.backends.openai_run import CLIENT_ENV, stream_client

    if args.client:
        os.environ[CLIENT_ENV] = args.client  # inherited by the client processes
    if args.sse:
        bench_sse()
    subprocess.run([*PIN_CLIENT, sys.executable, __file__, "--noop", "500"], check=True)
    print(f"open loop, Poisson arrivals, {TOKENS_IN}-token id prompts, {TOKENS_OUT}-token "
          f"streams, {args.seconds:g} s per run, twinbench serve --profile {args.profile} "
          f"--speed {args.speed:g}; server on core 1, client on core 0 (worker 2 on core 1); "
          f"stream client: {stream_client()}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
    print(f"{'rate':>6} {'wk':>3} {'reqs':>6} {'ok':>6} {'lag p50':>8} {'lag p99':>8} "
          f"{'lag max':>8} {'achieved':>9} {'client':>7} {'(main)':>7} {'us/msg':>7} {'server':>7}"
          f"  token late p50/p99/max")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in [int(w) for w in args.workers.split(",")]:
            for rate in [float(r) for r in args.rates.split(",")]:
                r = one(rate, workers, args, tmp)
                print(f"{r['rate']:6g} {r['workers']:3d} {r['requests']:6d} {r['ok']:6d} "
                      f"{r['lag_p50_ms']:6.2f}ms {r['lag_p99_ms']:6.2f}ms {r['lag_max_ms']:6.1f}ms "
                      f"{r['achieved_rate']:7.1f}/s {100 * r['client_cpu']:6.0f}% "
                      f"{100 * r['client_main_cpu']:6.0f}% {r['client_us_per_msg']:7.1f} "
                      f"{100 * r['server_cpu']:6.0f}%  {r['late_p50_ms']:.1f}/"
                      f"{r['late_p99_ms']:.1f}/{r['late_max_ms']:.1f} ms"
                      + (f"  [{r['top_error'][1]}x {r['top_error'][0]}]" if r["top_error"] else ""),
                      flush=True)


if __name__ == "__main__":
    main()
