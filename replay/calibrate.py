"""Run a profiling plan against a real server through the real backend and turn what was
measured into fit rows (`twinbench calibrate`; the fit itself is in `calibrate_fit.py`).

Every point of the plan is replayed with `OpenAIBackend` as a small trace whose requests all
arrive at 0 (a closed-loop batch), so the chunk times are measured exactly as in any replay.
Rows:
- decode / lora decode points: the batch decodes in lockstep; the median chunk gap at step k
  (over the batch's requests, then over a segment of steps) is one step with B sequences
  reading B·(prompt + k + 1) context tokens;
- prefill points (one request): its TTFT is the frontend overhead plus one prefill step; the
  overhead is estimated in the fit;
- load points: TTFT of an adapter's first use after it was evicted from the GPU slots (or
  registered fresh) minus its warm TTFT.
Static facts (KV capacity, max_loras) are read from `/metrics` before profiling.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import aiohttp
import numpy as np

from twinbench.backends.base import ReplayOptions
from twinbench.replay.calibrate_plan import PlanPoint
from twinbench.reports.records import RequestRecord
from twinbench.traces.core import Adapter, Request, Trace
from twinbench.traces.errors import TwinbenchError

SEGMENT_STEPS = 8       # decode gaps pooled per fit row
SKIP_FIRST_GAPS = 2     # the first decode steps can still overlap a late admission


@dataclass
class ServerTarget:
    """What calibration knows about the server before it sends a request."""

    base_url: str
    model: str
    version: str | None
    max_model_len: int
    adapters: dict[str, int]                 # name -> rank (0 = unknown)
    adapter_paths: dict[str, str]            # name -> path on the server (from /v1/models)
    cache_config: dict[str, Any] = field(default_factory=dict)
    max_loras: int | None = None             # from /metrics lora info or given
    lora_enabled: bool = True
    runtime_loading: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PointResult:
    point: PlanPoint
    records: list[list[RequestRecord]]       # per repeat
    wall_s: float
    server: dict[str, float] = field(default_factory=dict)  # server-side means (histograms)

    def ok(self) -> list[list[RequestRecord]]:
        return [[r for r in rep if r.status == "ok"] for rep in self.records]


def _adapter_rank_from_path(path: str | None) -> int:
    """LoRA rank from the adapter's `adapter_config.json` when the path is readable here."""
    if not path:
        return 0
    try:
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            return int(json.load(f).get("r") or 0)
    except (OSError, ValueError, TypeError):
        return 0


def parse_adapters(text: str | None) -> list[tuple[str, int | None]]:
    """`--adapters a0,a1:16` -> [(name, rank or None)]."""
    out: list[tuple[str, int | None]] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, rank = item.partition(":")
        if sep:
            try:
                r = int(rank)
            except ValueError:
                r = -1
            if r < 1:
                raise TwinbenchError(f"--adapters {item!r}: expected NAME or NAME:RANK (rank >= 1)")
            out.append((name, r))
        else:
            out.append((name, None))
    return out


def read_target(backend, adapters: list[tuple[str, int | None]], given_max_loras: int | None
                ) -> ServerTarget:
    """Server facts before profiling: models, version, /metrics cache config and LoRA info."""
    facts = backend.facts or backend.probe_now()
    base = backend.config.model or facts.base_model()
    if base is None:
        raise TwinbenchError(f"--base-url {backend.config.base_url}: /v1/models lists no model")
    served = {m.get("id"): m for m in facts.models}
    names = adapters if adapters else [(m, None) for m, d in served.items() if d.get("parent")]
    ranks: dict[str, int] = {}
    paths: dict[str, str] = {}
    for name, rank in names:
        if name not in served:
            raise TwinbenchError(f"--adapters {name}: not served by {backend.config.base_url} "
                                 f"(it serves: {', '.join(map(str, served))})")
        root = served[name].get("root")
        if root and root != name:
            paths[name] = str(root)
        ranks[name] = rank if rank is not None else _adapter_rank_from_path(paths.get(name))
    max_loras = given_max_loras if given_max_loras is not None else read_max_loras(backend)
    return ServerTarget(base_url=backend.config.base_url, model=str(base), version=facts.version,
                        max_model_len=int(facts.max_model_len(base) or 2048), adapters=ranks,
                        adapter_paths=paths, cache_config=dict(facts.cache_config),
                        max_loras=max_loras, lora_enabled=bool(ranks))


def read_max_loras(backend) -> int | None:
    """`max_lora` of `vllm:lora_requests_info` (vLLM publishes it once a request ran)."""
    from twinbench.backends.server_metrics import parse_metrics

    text = metrics_text(backend)
    if not text:
        return None
    return (parse_metrics(text).get("lora") or {}).get("max_lora") or None


SERVER_HISTOGRAMS = {"vllm:inter_token_latency_seconds": "itl_ms",
                     "vllm:time_to_first_token_seconds": "ttft_ms"}


def server_histograms(text: str | None) -> dict[str, tuple[float, float]]:
    """(sum, count) of the server's ITL and TTFT histograms, when it publishes them."""
    out: dict[str, tuple[float, float]] = {}
    for line in (text or "").splitlines():
        for name in SERVER_HISTOGRAMS:
            for suffix, pos in (("_sum", 0), ("_count", 1)):
                if line.startswith(name + suffix + "{") or line.startswith(name + suffix + " "):
                    try:
                        value = float(line.rsplit(" ", 1)[1])
                    except (IndexError, ValueError):
                        continue
                    pair = list(out.get(name, (0.0, 0.0)))
                    pair[pos] += value
                    out[name] = (pair[0], pair[1])
    return out


def histogram_means(before: dict, after: dict) -> dict[str, float]:
    """Server-side mean ITL / TTFT (ms) of what ran between two scrapes."""
    out = {}
    for name, key in SERVER_HISTOGRAMS.items():
        if name in before and name in after:
            ds, dc = after[name][0] - before[name][0], after[name][1] - before[name][1]
            if dc > 0:
                out[f"server_mean_{key}"] = 1000 * ds / dc
    return out


def _add_histogram_delta(acc: dict, before: dict, after: dict) -> None:
    """Add what the server's histograms gained between two scrapes to `acc` ((sum, count))."""
    for name in SERVER_HISTOGRAMS:
        if name in before and name in after:
            s0, c0 = acc.get(name, (0.0, 0.0))
            acc[name] = (s0 + after[name][0] - before[name][0],
                         c0 + after[name][1] - before[name][1])


def metrics_text(backend) -> str | None:
    """The server's /metrics exposition (None when it has none or cannot be reached)."""
    async def go():
        from twinbench.backends.openai_probe import fetch_metrics
        async with aiohttp.ClientSession() as s:
            try:
                return await fetch_metrics(s, backend.config.base_url, backend.config.headers())
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                return None
    return asyncio.run(go())


async def _post(base_url: str, headers: dict, path: str, body: dict) -> int:
    async with aiohttp.ClientSession() as s:
        try:
            async with s.post(f"{base_url}{path}", json=body, headers=headers,
                              timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return 0


def register_adapter(backend, name: str, path: str) -> bool:
    return asyncio.run(_post(backend.config.base_url, backend.config.headers(),
                             "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})) == 200


def unregister_adapter(backend, name: str) -> bool:
    return asyncio.run(_post(backend.config.base_url, backend.config.headers(),
                             "/v1/unload_lora_adapter", {"lora_name": name})) == 200


def batch_trace(point: PlanPoint, tag: str) -> Trace:
    """`point.concurrency` requests arriving together, adapters cycled over the batch."""
    reqs = [Request(id=f"{tag}-{i}", arrival_s=0.0,
                    adapter=point.adapters[i % len(point.adapters)],
                    prompt_tokens=point.prompt_tokens, output_tokens=point.output_tokens)
            for i in range(point.concurrency)]
    catalog = [Adapter(a) for a in dict.fromkeys(x for x in point.adapters if x is not None)]
    return Trace.from_requests(reqs, catalog, meta={"source": "calibration plan"})


def send_batch(backend, point: PlanPoint, tag: str, seed: int, timeout_s: float = 120.0
               ) -> list[RequestRecord]:
    from twinbench.replay.run import replay_to_list

    options = ReplayOptions(seed=seed, quiet=True, drain_limit_s=timeout_s,
                            request_timeout_s=timeout_s)
    records, _ = replay_to_list(batch_trace(point, tag), backend, options)
    return records


class Profiler:
    """Runs plan points in order until the plan or the budget ends (stops cleanly)."""

    def __init__(self, backend, target: ServerTarget, budget_s: float, quiet: bool = False,
                 seed: int = 0):
        self.backend = backend
        self.target = target
        self.budget_s = budget_s
        self.quiet = quiet
        self.seed = seed
        self.started = time.monotonic()
        self.results: list[PointResult] = []
        self.loads: list[dict] = []
        self.skipped: list[dict] = []
        self.ran: list[dict] = []
        self.fresh_names = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def warm_up(self) -> float:
        """A base request (kept as the first decode measurement: a fit is possible even when
        the budget ends early), then each adapter once so that none pays its first load inside
        a decode point; returns a step-time guess in ms from the base request."""
        probe = PlanPoint("decode", 1, 16, 32, note="warm-up decode")
        t0 = time.monotonic()
        recs = send_batch(self.backend, probe, "warm-base", self.seed)
        self.results.append(PointResult(probe, [recs], time.monotonic() - t0))
        for name in self.target.adapters:
            send_batch(self.backend, PlanPoint("lora", 1, 16, 2, adapters=(name,)),
                       f"warm-{name}", self.seed)
        gaps = [np.diff(r.chunk_times) for r in recs if r.status == "ok"
                and r.chunk_times is not None and len(r.chunk_times) > 2]
        if not gaps:
            raise TwinbenchError(f"--base-url {self.target.base_url}: the warm-up request "
                                 f"failed ({recs[0].error if recs else 'no record'})")
        return float(np.median(np.concatenate(gaps))) * 1000

    def run(self, points: list[PlanPoint], step_ms: float,
            on_batch: Callable[[PlanPoint], None] | None = None) -> None:
        """Run the plan with each point's repeats spread evenly over the profiling time.

        Repeat r of a point with n repeats is due at the fraction (r + ½) / n of the run, and
        batches go in that order. Sent back to back instead, a point's repeats would all
        measure one moment of a server whose speed drifts: on the 2-core VM one-request
        decode steps sat at ~8 ms for several seconds, then at ~10-11 ms, so four consecutive
        repeats of the one-request point could all land in a fast spell, and the fit then put
        the one-request step 20 % below what every later workload saw. Spread out, each point
        samples the drift as the workloads do, and the drift is no longer confounded with
        batch size or prompt length. A budget that ends early leaves every point with about
        the same share of its repeats, instead of points never run.
        """
        schedule = sorted(((r + 0.5) / p.repeats, k, r) for k, p in enumerate(points)
                          for r in range(p.repeats))
        per_point: dict[int, dict[str, Any]] = {}
        last_scrape = server_histograms(metrics_text(self.backend))
        try:
            for _, k, rep in schedule:
                point = points[k]
                est = point.est_s(step_ms) / point.repeats
                if self.remaining() < min(est, self.budget_s) * 0.8:
                    continue
                state = per_point.setdefault(k, {"reps": [], "done": 0, "wall": 0.0,
                                                 "hist": {}})
                t0 = time.monotonic()
                if point.kind == "load":
                    self._load_repeat(point, k, rep)
                else:
                    # a batch still running when the budget ends is cut there (its chunk
                    # gaps so far still count)
                    state["reps"].append(send_batch(
                        self.backend, point, f"p{k}r{rep}", self.seed * 100003 + k * 101 + rep,
                        timeout_s=max(5.0, self.remaining() + 5.0)))
                scrape = server_histograms(metrics_text(self.backend))
                if point.kind != "load":
                    _add_histogram_delta(state["hist"], last_scrape, scrape)
                last_scrape = scrape
                state["wall"] += time.monotonic() - t0
                state["done"] += 1
                if on_batch is not None:
                    on_batch(point)
        finally:  # an interrupted run keeps (and fits) what it measured
            for k, point in enumerate(points):
                state = per_point.get(k)
                if state is None:
                    self.skipped.append({"point": point.to_dict(), "reason": "budget"})
                    continue
                if point.kind != "load":
                    zero = {name: (0.0, 0.0) for name in state["hist"]}
                    self.results.append(PointResult(point, state["reps"], state["wall"],
                                                    histogram_means(zero, state["hist"])))
                self.ran.append({"point": point.to_dict(), "wall_s": round(state["wall"], 3),
                                 "repeats_run": state["done"]})

    # ---- adapter loads ------------------------------------------------------------------
    def _ttft_ms(self, name: str, tag: str, seed: int) -> float | None:
        recs = send_batch(self.backend, PlanPoint("load", 1, 16, 2, adapters=(name,)), tag, seed)
        r = recs[0]
        if r.status != "ok" or r.first_token_s is None or r.sent_s is None:
            return None
        return (r.first_token_s - r.sent_s) * 1000

    def _evict(self, keep: str, tag: str) -> bool:
        """Use `max_loras` other adapters so `keep` leaves the GPU slots (LRU)."""
        others = [a for a in self.target.adapters if a != keep]
        n = self.target.max_loras or 0
        if n < 1 or len(others) < n:
            return False
        send_batch(self.backend, PlanPoint("load", n, 16, 2, adapters=tuple(others[:n])),
                   tag, self.seed)
        return True

    def _load_repeat(self, point: PlanPoint, k: int, rep: int) -> None:
        """One cold-vs-warm measurement of `point`'s adapter (evicted, and where the server
        allows it, registered under a fresh name)."""
        name = point.adapters[0]
        rank = self.target.adapters.get(name, 0)
        tag = f"p{k}r{rep}"
        if self._evict(name, f"{tag}-evict"):
            cold = self._ttft_ms(name, f"{tag}-cold", self.seed + rep)
            warm = self._ttft_ms(name, f"{tag}-warm", self.seed + rep + 7)
            if cold is not None and warm is not None:
                self.loads.append({"kind": "cpu_to_gpu", "adapter": name, "rank": rank,
                                   "cold_ttft_ms": cold, "warm_ttft_ms": warm,
                                   "load_ms": max(0.0, cold - warm)})
        path = self.target.adapter_paths.get(name)
        if path and self.target.runtime_loading:
            fresh = f"twinbench-calibrate-{os.getpid()}-{self.fresh_names}"
            self.fresh_names += 1
            if register_adapter(self.backend, fresh, path):
                try:
                    self.backend.probe_now()
                    cold = self._ttft_ms(fresh, f"{tag}-fresh", self.seed + rep)
                    warm = self._ttft_ms(fresh, f"{tag}-fresh-warm", self.seed + rep + 7)
                    if cold is not None and warm is not None:
                        self.loads.append({"kind": "disk_to_cpu+cpu_to_gpu", "adapter": name,
                                           "rank": rank, "cold_ttft_ms": cold,
                                           "warm_ttft_ms": warm,
                                           "load_ms": max(0.0, cold - warm)})
                finally:
                    unregister_adapter(self.backend, fresh)
                    self.backend.probe_now()


def check_runtime_loading(backend, target: ServerTarget) -> bool:
    """Whether the server lets us register (and unregister) an adapter at runtime."""
    if not target.adapter_paths:
        return False
    name, path = next(iter(target.adapter_paths.items()))
    probe = f"twinbench-calibrate-probe-{os.getpid()}"
    if not register_adapter(backend, probe, path):
        return False
    unregister_adapter(backend, probe)
    return True


# ---- rows for the fit -----------------------------------------------------------------------

def _distinct(point: PlanPoint) -> list[str]:
    used = [point.adapters[i % len(point.adapters)] for i in range(point.concurrency)]
    return list(dict.fromkeys(a for a in used if a is not None))


def decode_rows(result: PointResult, ranks: dict[str, int], lora_server: bool) -> list[dict]:
    """One row per segment of lockstep decode steps.

    A segment's step time is, per request, the time between its first and last chunk of the
    segment divided by the steps between them (robust to chunks delivered in bursts, which
    a busy frontend does), then the median over the batch. Segments more than twice off the
    point's median are dropped as interference (another process took the CPU), since a
    batch's steps vary only slowly with context."""
    p = result.point
    names = _distinct(p)
    rows: list[dict] = []
    for rep, recs in enumerate(result.records):
        # timed-out requests (cut at the budget) keep the steps they streamed
        times = [np.asarray(r.chunk_times, dtype=np.float64) for r in recs
                 if r.chunk_times is not None and len(r.chunk_times) > SKIP_FIRST_GAPS + 2]
        if len(times) < max(1, (p.concurrency + 1) // 2):
            continue  # most of the batch failed: its steps are not this point's batch
        n = min(len(t) for t in times)
        chunk = np.stack([t[:n] for t in times])
        segs = []
        for k0 in range(SKIP_FIRST_GAPS, n - 1, SEGMENT_STEPS):
            k1 = min(k0 + SEGMENT_STEPS, n - 1)
            if k1 - k0 < 2:
                continue
            step_ms = float(np.median((chunk[:, k1] - chunk[:, k0]) / (k1 - k0))) * 1000
            segs.append((k0, k1, step_ms))
        if not segs:
            continue
        mid = float(np.median([s for _, _, s in segs]))
        for k0, k1, step_ms in segs:
            if not mid / 2 <= step_ms <= 2 * mid:
                continue
            kmid = (k0 + k1 - 1) / 2
            rows.append({
                "kind": "lora decode" if names else "decode", "point": p.note, "repeat": rep,
                "steps": k1 - k0, "step_ms": step_ms, "decode_seqs": p.concurrency,
                "kv_tokens": int(round(p.concurrency * (p.prompt_tokens + kmid + 1))),
                "prefill_tokens": 0, "attention_pairs": 0, "adapters": len(names),
                "rank_sum": sum(ranks.get(a, 0) for a in names), "lora_server": lora_server})
    return rows


def prefill_rows(result: PointResult, ranks: dict[str, int], lora_server: bool,
                 max_step_tokens: int | None = None) -> list[dict]:
    """One row per single-request prefill point: the median TTFT over its repeats.

    Prompts longer than one step's token budget are prefilled over several steps; they are
    not one step, so they are left out of the fit (kept in the raw measurements)."""
    p = result.point
    if p.concurrency != 1 or (max_step_tokens and p.prompt_tokens > max_step_tokens):
        return []
    ttfts = [(r.first_token_s - r.sent_s) * 1000 for rep in result.ok() for r in rep
             if r.first_token_s is not None and r.sent_s is not None]
    if not ttfts:
        return []
    names = _distinct(p)
    return [{"kind": "lora prefill" if names else "prefill", "point": p.note,
             "ttft_ms": float(np.median(ttfts)), "ttft_all_ms": [float(x) for x in ttfts],
             "decode_seqs": 0, "kv_tokens": 0, "prefill_tokens": p.prompt_tokens,
             "attention_pairs": p.prompt_tokens * (p.prompt_tokens + 1) // 2,
             "adapters": len(names), "rank_sum": sum(ranks.get(a, 0) for a in names),
             "lora_server": lora_server}]


def rows_from_results(results: list[PointResult], ranks: dict[str, int], lora_server: bool,
                      max_step_tokens: int | None = None) -> tuple[list[dict], list[dict]]:
    """(decode rows, prefill rows) of every measured point."""
    dec, pre = [], []
    for res in results:
        if res.point.output_tokens > 2:
            dec += decode_rows(res, ranks, lora_server)
        else:
            pre += prefill_rows(res, ranks, lora_server, max_step_tokens)
    return dec, pre


def raw_measurements(results: list[PointResult]) -> list[dict]:
    """Per point and repeat: each request's TTFT and median chunk gap (ms), for provenance."""
    out = []
    for res in results:
        reps = []
        for recs in res.records:
            reps.append([{"status": r.status,
                          "ttft_ms": None if r.first_token_s is None or r.sent_s is None
                          else round((r.first_token_s - r.sent_s) * 1000, 3),
                          "median_gap_ms": None if r.chunk_times is None or len(r.chunk_times) < 2
                          else round(float(np.median(np.diff(r.chunk_times))) * 1000, 3),
                          "output_tokens": r.output_tokens, "adapter": r.adapter}
                         for r in recs])
        out.append({"point": res.point.to_dict(), "wall_s": round(res.wall_s, 3),
                    "server_histograms": res.server, "repeats": reps})
    return out


def progress_bar(total: int, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="calibrate", unit="batch", file=sys.stderr, dynamic_ncols=True)
