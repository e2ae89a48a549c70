"""The real backend (`OpenAIBackend`, aiohttp) replays a trace against `twinbench serve`.

The backend sends on its own wall clock (no `twin_arrival_s`), so the served twin stamps each
request's simulated arrival itself; the server's `--record` file lists them with the
simulated token times it streamed. Given those arrivals, the in-process twin must compute the
very same token times — which checks the real-time driver against the batch simulator through
the whole HTTP path. The run file must hold every request ok with exact usage, per-adapter
results and `/metrics` samples scraped from the twin.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from twinbench.backends.base import ReplayOptions
from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
from twinbench.replay.run import replay_to_file
from twinbench.reports.runfile import read_run
from twinbench.traces.core import Adapter, Request, Trace
from twinbench.twin.simulation import simulate
from twinbench.twin.config import ServerConfig

PROFILE = "llama-3.1-8b-h100"
ADAPTERS = ["a0", "a1", "a2", "a3"]
FLAGS = {"max_num_seqs": 6, "max_num_batched_tokens": 512, "max_loras": 2, "max_cpu_loras": 3,
         "num_gpu_blocks": 120, "block_size": 16, "max_model_len": 1024}


def make_trace(n: int = 24, seed: int = 5) -> Trace:
    """Arrivals ~25/s over 4 adapters and the base model; every (prompt, output) pair is
    unique, so a server-side record maps to its trace row."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / 25, n))
    prompts = rng.choice(np.arange(20, 400), size=n, replace=False)
    reqs = [Request(id=f"r{i}", arrival_s=float(arrivals[i]),
                    adapter=[None, *ADAPTERS][i % 5], prompt_tokens=int(prompts[i]),
                    output_tokens=int(rng.integers(2, 40))) for i in range(n)]
    return Trace.from_requests(reqs, adapters=[Adapter(a, rank=16) for a in ADAPTERS])


@pytest.fixture(scope="module")
def served(twin_server_launcher, tmp_path_factory):
    record = tmp_path_factory.mktemp("serve-record") / "served.jsonl"
    flags = ["--profile", PROFILE, "--lora-modules", *ADAPTERS, "--record", str(record),
             "--client-clock-slack-ms", "2500"]  # generous: CI machines are busy
    for name, value in FLAGS.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    return twin_server_launcher(*flags), record


def test_backend_replay_matches_in_process_twin(served, tmp_path):
    base_url, record_path = served
    trace = make_trace()
    backend = OpenAIBackend(OpenAIConfig(base_url=base_url, scrape_interval_s=0.2))
    out = tmp_path / "run.jsonl"
    info, status, _ = replay_to_file(trace, backend, ReplayOptions(quiet=True), str(out))
    assert status == "complete"
    run = read_run(out)
    assert not run.partial
    by_id = {r.id: r for r in run.records}
    assert len(by_id) == len(trace)
    for i in range(len(trace)):
        rec = by_id[trace.request_id(i)]
        assert rec.status == "ok", rec.error
        assert rec.output_tokens == rec.requested_output_tokens == int(trace.output_tokens[i])
        assert rec.extra.get("server_prompt_tokens") == int(trace.prompt_tokens[i])
        assert len(rec.chunk_arrays()[0]) == rec.output_tokens
    assert {r.adapter for r in run.records} == {None, *ADAPTERS}
    assert run.samples and all("running" in s["metrics"] for s in run.samples)
    assert any(s["metrics"]["running"] > 0 for s in run.samples)

    # the server's account of the same run, mapped to trace rows by (model, prompt, output)
    served_lines = [json.loads(line) for line in record_path.read_text().splitlines()]
    row_of = {(trace.adapter_name(i), int(trace.prompt_tokens[i]), int(trace.output_tokens[i])):
              i for i in range(len(trace))}
    arrival_ns = np.zeros(len(trace), dtype=np.int64)
    times: dict[str, list[int]] = {}
    for line in served_lines:
        i = row_of[(line["adapter"], line["prompt_tokens"], line["output_tokens"])]
        arrival_ns[i] = line["arrival_ns"]
        times[trace.request_id(i)] = line["token_times_ns"]
    assert len(times) == len(trace)
    # in-process twin, same config and profile, arrivals as the served twin stamped them
    order = np.argsort(arrival_ns, kind="stable")
    replayed = trace.select(order).with_columns(arrival_s=arrival_ns[order] / 1e9)
    expected = simulate(replayed, ServerConfig(**FLAGS), PROFILE).records
    for rec in expected:
        assert rec.status == "ok"
        assert times[rec.id] == np.rint(rec.chunk_times * 1e9).astype(np.int64).tolist(), rec.id


def test_twin_clock_records_carry_the_in_process_twins_times(served, tmp_path):
    """With --twin-clock the backend sends each trace arrival as twin_arrival_s; the served
    twin then simulates the trace's own timing, and each record keeps the twin's account
    (extension field `twin`) of its simulated token times: equal to the in-process twin's."""
    base_url, _ = served
    trace = make_trace(seed=9)
    backend = OpenAIBackend(OpenAIConfig(base_url=base_url, scrape_interval_s=0, twin_clock=True,
                                         extra_body={"temperature": 0.0}))
    out = tmp_path / "run.jsonl"
    _, status, _ = replay_to_file(trace, backend, ReplayOptions(quiet=True), str(out))
    assert status == "complete"
    got = {r.id: r for r in read_run(out).records}
    expected = simulate(trace, ServerConfig(**FLAGS), PROFILE).records
    assert len(expected) == len(trace) == len(got)
    for rec in expected:
        twin = got[rec.id].extra["twin"]
        assert got[rec.id].status == "ok" and "arrival_late_ns" not in twin
        assert twin["arrival_ns"] == round(rec.arrival_s * 1e9)
        assert twin["chunk_times_ns"] == np.rint(rec.chunk_times * 1e9).astype(np.int64).tolist()
        assert twin["first_token_ns"] == twin["chunk_times_ns"][0]
        assert twin["finish_ns"] == twin["chunk_times_ns"][-1]
        assert twin["output_tokens"] == rec.output_tokens == got[rec.id].output_tokens
