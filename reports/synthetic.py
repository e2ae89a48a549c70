"""Synthetic runs for tests and benchmarks of the metrics layer (not a model of vLLM).

`queue_run` simulates an M/G/c queue in front of a server with `slots` parallel sequences:
Poisson arrivals, FIFO, each request holds a slot for its prefill plus one decode step per
output token (jittered). Different seeds give genuinely different runs (arrivals, lengths and
service noise), which is what the regression gate's noise tests need. `bulk_records` makes a
large run fast (vectorised, no queueing) for the scale benchmark.
"""
from __future__ import annotations

import heapq

import numpy as np

from twinbench.reports.records import RequestRecord


def queue_run(n: int, seed: int, *, rate: float = 6.0, slots: int = 4,
              adapters: tuple[str, ...] = ("a", "b", "c"), prompt_tokens: int = 64,
              mean_output_tokens: int = 32, prefill_s: float = 0.05, tpot_s: float = 0.012,
              slowdown: float = 1.0, starve: str | None = None,
              starve_after_s: float = float("inf"), service_seed: int | None = None,
              starve_delay_per_s: float = 0.0) -> list[RequestRecord]:
    """Records of one simulated run; `slowdown` scales service time (a planted regression).

    The workload (arrivals, adapters, lengths) comes from `seed`; the service-time noise from
    `service_seed` (default: `seed`), so one trace can be "replayed" with fresh noise.

    `starve`: requests of that adapter arriving after `starve_after_s` are never admitted
    (left `unfinished`), as a cold adapter under the max_loras skip rule would be; with
    `starve_delay_per_s` > 0 they are admitted instead, but only after an extra wait that grows
    by that many seconds per second of run time (a slowly starving adapter).
    """
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    adapter = rng.integers(0, len(adapters), n)
    out = np.maximum(1, rng.geometric(1.0 / mean_output_tokens, n))
    srv = rng if service_seed is None else np.random.default_rng([seed, service_seed])
    prefill = prefill_s * slowdown * srv.lognormal(0.0, 0.2, n)
    free = [0.0] * slots  # heap of slot free times
    records = []
    for i in range(n):
        name = adapters[adapter[i]]
        rec = RequestRecord(id=f"r{i}", adapter=name, arrival_s=float(arrival[i]),
                            prompt_tokens=prompt_tokens, requested_output_tokens=int(out[i]))
        held = 0.0
        if name == starve and arrival[i] > starve_after_s and starve_delay_per_s > 0:
            held = (arrival[i] - starve_after_s) * starve_delay_per_s
        elif name == starve and arrival[i] > starve_after_s:
            rec.sent_s = float(arrival[i])
            rec.status, rec.error = "unfinished", "never admitted"
            records.append(rec)
            continue
        slot_free = heapq.heappop(free)
        start = max(float(arrival[i]) + held, slot_free)
        steps = tpot_s * slowdown * srv.lognormal(0.0, 0.15, int(out[i]) - 1)
        first = start + prefill[i]
        chunks = first + np.concatenate([[0.0], np.cumsum(steps)])
        heapq.heappush(free, float(chunks[-1]))
        rec.sent_s = float(arrival[i])  # open loop: sent on time; server-side queueing
        rec.first_token_s = float(chunks[0])
        rec.end_s = float(chunks[-1])
        rec.output_tokens = int(out[i])
        rec.chunk_times = chunks
        rec.status = "ok"
        records.append(rec)
    return records


def bulk_records(n: int, chunks: int = 100, seed: int = 0, rate: float = 1000.0,
                 adapters: int = 8) -> list[RequestRecord]:
    """`n` independent records with `chunks` token chunks each, built vectorised."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    ttft = rng.lognormal(np.log(0.05), 0.3, n)
    gaps = rng.lognormal(np.log(0.01), 0.2, (n, chunks - 1))
    times = np.empty((n, chunks))
    times[:, 0] = arrival + ttft
    times[:, 1:] = gaps
    np.cumsum(times, axis=1, out=times)
    names = [f"lora{k}" for k in range(adapters)]
    which = rng.integers(0, adapters, n)
    return [RequestRecord(id=str(i), adapter=names[which[i]], arrival_s=float(arrival[i]),
                          prompt_tokens=128, requested_output_tokens=chunks, status="ok",
                          sent_s=float(arrival[i]), first_token_s=float(times[i, 0]),
                          end_s=float(times[i, -1]), output_tokens=chunks,
                          chunk_times=times[i]) for i in range(n)]
