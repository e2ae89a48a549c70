"""The naive baseline the twin must beat: every token costs one constant step, nothing else.

No scheduler (no queue, no `max_num_seqs`, no token budget), no KV limit, no adapter slots or
loads, no batch-size or context effect: a request's first token comes `first_token_ms` after
its arrival and each further token `step_ms` later. Both constants come from the profile's
`baseline` section (written by `twinbench calibrate`: the frontend overhead plus one step, and
the measured median decode step of a single request), else from its step-time model at one
sequence. It is what a back-of-the-envelope "tokens × ITL" estimate predicts.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from twinbench.backends.base import ReplayOptions, RunInfo
from twinbench.reports.records import RequestRecord
from twinbench.traces.core import Trace
from twinbench.twin.profile import Profile


def baseline_constants(profile: Profile) -> tuple[float, float]:
    """(first_token_ms, step_ms) of the naive model."""
    b = profile.data.get("baseline") or {}
    st = profile.section("step_time")
    step = float(b.get("step_ms") or (st["base_ms"] + st["per_decode_seq_ms"]))
    fe = profile.data.get("frontend", {})
    first = float(b.get("first_token_ms") or (float(fe.get("input_ms", 0.0)) + step))
    return first, step


def simulate_baseline(trace: Trace, profile: Profile | str, duration_s: float | None = None,
                      warmup_requests: int = 0) -> list[RequestRecord]:
    """One record per trace request under the naive constant-step model."""
    profile = Profile.load(profile)
    first_ms, step_ms = baseline_constants(profile)
    names = [a.name for a in trace.adapters]
    out: list[RequestRecord] = []
    for i in range(len(trace)):
        a = int(trace.adapter_idx[i])
        arrival = float(trace.arrival_s[i])
        n_out = int(trace.output_tokens[i])
        rec = RequestRecord(id=trace.request_id(i), adapter=names[a] if a >= 0 else None,
                            arrival_s=arrival, prompt_tokens=int(trace.prompt_tokens[i]),
                            requested_output_tokens=n_out, warmup=i < warmup_requests)
        if duration_s is not None and arrival > duration_s:
            rec.status, rec.error = "cancelled", "not dispatched (after --duration)"
            out.append(rec)
            continue
        first = arrival + first_ms / 1000
        times = first + np.arange(n_out, dtype=np.float64) * (step_ms / 1000)
        rec.sent_s, rec.first_token_s, rec.end_s = arrival, float(times[0]), float(times[-1])
        rec.chunk_times = times
        rec.chunk_tokens = np.ones(n_out, dtype=np.int32)
        rec.output_tokens, rec.status = n_out, "ok"
        out.append(rec)
    return out


class BaselineBackend:
    """The naive baseline as a `Backend` (simulated time, like the twin)."""

    name = "baseline"
    realtime = False

    def __init__(self, profile: Profile | str):
        self.profile = Profile.load(profile)

    def describe(self) -> dict[str, Any]:
        first, step = baseline_constants(self.profile)
        return {"name": self.name, "kind": "naive baseline", "profile": self.profile.name,
                "first_token_ms": first, "step_ms": step}

    async def replay(self, trace: Trace, options: ReplayOptions, sink) -> RunInfo:
        records = await asyncio.to_thread(simulate_baseline, trace, self.profile,
                                          options.duration_s, options.warmup_requests)
        for rec in records:
            sink.emit(rec)
        return RunInfo(backend=self.name, profile={"name": self.profile.name},
                       extra=self.describe())
