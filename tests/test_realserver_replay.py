"""The real backend replays multi-adapter traces against the real vLLM CPU server.

One server per session (`vllm_server` in conftest.py): 4 adapters, `--max-loras 2`,
`--max-num-seqs 16`, KV for 32k tokens. With fewer requests than `max_num_seqs` and KV to
spare, only the adapter gate can hold a request back; the test checks that it is the gate:
requests of the third and fourth adapters get their first token only after every request of
one of the first pair finished, while the scraped `/metrics` show requests waiting with free
sequence slots.
"""
from __future__ import annotations

import json
import urllib.request

import numpy as np

from twinbench.backends.base import ReplayOptions
from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
from twinbench.replay.run import replay_to_file
from twinbench.reports.runfile import read_run
from twinbench.traces.core import Adapter, Request, Trace
from twinbench.traces.transforms import clip_lengths

ADAPTERS = ["a0", "a1", "a2", "a3"]
N_GATED = 8


def gate_trace(max_model_len: int) -> Trace:
    """An over-long base request first (clipped to max_model_len), then 8 adapter requests,
    round-robin a0..a3 every 10 ms. Small on purpose: LoRA steps are slow on 2 shared cores."""
    rng = np.random.default_rng(3)
    reqs = [Request(id="long", arrival_s=0.0, adapter=None, prompt_tokens=1500,
                    output_tokens=40)]
    reqs += [Request(id=f"g{i}", arrival_s=0.3 + 0.01 * i, adapter=ADAPTERS[i % 4],
                     prompt_tokens=int(rng.integers(16, 64)),
                     output_tokens=int(rng.integers(10, 16))) for i in range(N_GATED)]
    trace = Trace.from_requests(reqs, adapters=[Adapter(a, rank=16) for a in ADAPTERS])
    return clip_lengths(trace, max_model_len)


def test_adapter_gate_holds_the_second_pair(vllm_server, tmp_path):
    config = vllm_server.server_config()
    trace = gate_trace(config["max_model_len"])
    assert int(trace.prompt_tokens[0]) + int(trace.output_tokens[0]) == config["max_model_len"]
    backend = OpenAIBackend(OpenAIConfig(base_url=vllm_server.base_url, scrape_interval_s=0.05))
    out = tmp_path / "gate.jsonl"
    _, status, _ = replay_to_file(trace, backend, ReplayOptions(quiet=True), str(out))
    assert status == "complete"
    run = read_run(out)
    by_id = {r.id: r for r in run.records}
    assert len(by_id) == len(trace)
    for i in range(len(trace)):
        rec = by_id[trace.request_id(i)]
        assert rec.status == "ok", rec.error
        assert rec.output_tokens == int(trace.output_tokens[i])
        assert rec.extra.get("server_prompt_tokens") == int(trace.prompt_tokens[i])
        assert len(rec.chunk_arrays()[0]) == rec.output_tokens  # one chunk per token
    assert {r.adapter for r in run.records} == {None, *ADAPTERS}

    # metrics were scraped into the run file
    samples = [s["metrics"] for s in run.samples]
    assert samples and all({"running", "waiting", "kv_usage"} <= set(m) for m in samples)
    # waiting while sequence slots were free: only the adapter gate can do that here
    held = [m for m in samples if m["waiting"] > 0 and 0 < m["running"] < config["max_num_seqs"]]
    assert held, samples
    assert all(len(m["lora"]["running"]) <= config["max_loras"] for m in samples if "lora" in m)

    # FCFS + skip: a0 and a1 arrive first and run; a2/a3 requests start only once every
    # request of a0 or of a1 is done (the adapter set drops below max_loras)
    recs = [by_id[f"g{i}"] for i in range(N_GATED)]
    first_pair = {"a0", "a1"}
    done_at = min(max(r.end_s for r in recs if r.adapter == a) for a in first_pair)
    for r in recs:
        if r.adapter in first_pair:
            assert r.first_token_s < done_at
        else:
            assert r.first_token_s > done_at, (r.id, r.adapter, r.first_token_s, done_at)
    ttft = {a: [r.ttft_s for r in recs if r.adapter == a] for a in ADAPTERS}
    assert min(ttft["a2"] + ttft["a3"]) > max(ttft["a0"] + ttft["a1"])


def test_runtime_loaded_adapter(vllm_server, tmp_path):
    """An adapter the server does not list is registered through /v1/load_lora_adapter."""
    path = str(vllm_server.adapters["a1"])
    reqs = [Request(id=f"rt{i}", arrival_s=0.05 * i, adapter="rt-lora", prompt_tokens=30 + i,
                    output_tokens=8) for i in range(3)]
    trace = Trace.from_requests(reqs, adapters=[Adapter("rt-lora", rank=16, path=path)])
    backend = OpenAIBackend(OpenAIConfig(base_url=vllm_server.base_url, scrape_interval_s=0))
    out = tmp_path / "rt.jsonl"
    try:
        info, status, _ = replay_to_file(trace, backend, ReplayOptions(quiet=True), str(out))
        assert status == "complete"
        assert info.extra["adapters_loaded"] == ["rt-lora"]
        run = read_run(out)
        assert [r.status for r in run.records] == ["ok"] * 3
        assert [r.output_tokens for r in run.records] == [8, 8, 8]
        models = json.loads(urllib.request.urlopen(vllm_server.base_url + "/v1/models").read())
        assert "rt-lora" in {m["id"] for m in models["data"]}
    finally:
        req = urllib.request.Request(vllm_server.base_url + "/v1/unload_lora_adapter",
                                     data=json.dumps({"lora_name": "rt-lora"}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()
