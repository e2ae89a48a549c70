"""Real backend against a real (small, local) aiohttp server: faults become records.

Each request's model picks the server's behaviour (tests/backend_fake_server.py): healthy
streams, HTTP 500/400 with bodies, a connection dropped mid-stream, a server that falls
silent, malformed SSE data, an output cut short, a stream without [DONE]. Every test runs over
both stream clients (backends/fast_stream.py and the aiohttp fallback).
"""
import asyncio
from pathlib import Path

import numpy as np
import pytest

from twinbench.backends.base import ReplayOptions
from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
from twinbench.replay.run import replay_to_file
from twinbench.reports.runfile import read_run
from twinbench.traces.core import Adapter, Trace
from twinbench.traces.errors import TwinbenchError


@pytest.fixture(scope="module", autouse=True, params=["fast", "aiohttp"])
def http_client(request):
    """Every test here runs over both stream clients (`fast` is the default one)."""
    from twinbench.backends.openai_run import CLIENT_ENV, stream_client

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CLIENT_ENV, request.param)
        assert stream_client() == request.param
        yield request.param


@pytest.fixture(scope="module")
def server(fake_server, http_client):  # a fresh server per client: tests load adapters
    srv = fake_server(token_delay_s=0.002, max_model_len=256).start()
    yield srv
    srv.stop()


def _trace(models, prompt=20, output=8, gap=0.005):
    names = sorted({m for m in models if m != "tiny"})
    adapters = [Adapter(n) for n in names]
    idx = [-1 if m == "tiny" else names.index(m) for m in models]
    n = len(models)
    return Trace(arrival_s=np.arange(n) * gap, adapter_idx=np.array(idx),
                 prompt_tokens=np.full(n, prompt), output_tokens=np.full(n, output),
                 adapters=adapters)


def _run(tmp_path, trace, config, **opts):
    out = tmp_path / "run.jsonl"
    backend = OpenAIBackend(config)
    info, status, sink = replay_to_file(trace, backend, ReplayOptions(quiet=True, **opts), out)
    return read_run(out), info, status


def test_every_fault_becomes_a_record_and_the_run_goes_on(server, tmp_path):
    models = ["tiny", "e500", "e400", "break", "hang", "badjson", "short", "noend", "a0"]
    cfg = OpenAIConfig(base_url=server.url + "/v1", request_timeout_s=1.0,
                       scrape_interval_s=0.1, api_key="sk-secret-123")
    run, info, status = _run(tmp_path, _trace(models), cfg)
    assert status == "complete" and run.footer["status"] == "complete"
    by = {r.adapter or "tiny": r for r in run.records}
    assert len(run.records) == len(models)
    for m in ("tiny", "a0"):
        r = by[m]
        assert r.status == "ok" and r.output_tokens == 8 and r.error is None
        assert len(r.chunk_times) == 8 and list(r.chunk_arrays()[1]) == [1] * 8
        assert r.sent_s <= r.first_token_s <= r.end_s == r.chunk_times[-1]
        assert np.all(np.diff(r.chunk_times) >= 0)
    assert by["e500"].status == "error" and by["e500"].error == "HTTP 500: engine exploded"
    assert by["e400"].status == "error" and by["e400"].error == "HTTP 400: max_tokens is bad"
    assert by["break"].status == "error" and "stream broken after 3 chunks" in by["break"].error
    assert len(by["break"].chunk_times) == 3  # what arrived before the break is kept
    assert by["hang"].status == "timeout" and "1 s" in by["hang"].error
    assert by["badjson"].status == "error" and "malformed SSE data" in by["badjson"].error
    assert by["noend"].status == "error" and "without [DONE]" in by["noend"].error
    short = by["short"]
    assert short.status == "ok" and short.output_tokens == 4
    assert short.extra["cut_short"] == {"output_tokens": 4, "requested": 8,
                                        "finish_reason": "length"}
    assert info.extra["cut_short_requests"] == 1
    # server facts and scraped metrics are in the run file; the key is nowhere in it
    assert info.version == "0.0-fake" and info.server_config["max_model_len"] == 256
    assert info.server_config["cache_config"]["num_gpu_blocks"] == 2048
    assert run.samples and run.samples[0]["metrics"]["lora"]["running"] == ["a0", "a1"]
    assert "sk-secret-123" not in Path(run.path).read_text()
    # what the server received: exact output lengths asked, ids prompts, the adapter as model
    bodies = [b for _, path, b in server.received if b["model"] in ("tiny", "a0")]
    for b in bodies[-2:]:
        assert b["max_tokens"] == 8 and b["min_tokens"] == 8 and b["ignore_eos"] is True
        assert b["stream"] is True and b["stream_options"] == {"include_usage": True}
        assert isinstance(b["prompt"], list) and len(b["prompt"]) == 20


def test_connection_refused_is_an_error_record_per_request(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = OpenAIConfig(base_url=f"http://127.0.0.1:{port}", model="tiny", check_models=False,
                       scrape_interval_s=0)
    run, _, status = _run(tmp_path, _trace(["tiny"] * 3), cfg)
    assert status == "complete" and len(run.records) == 3
    for r in run.records:
        assert r.status == "error" and r.error.startswith("cannot connect")
        assert r.sent_s is not None and r.first_token_s is None
    with pytest.raises(TwinbenchError, match="not reachable"):
        OpenAIBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{port}")).probe_now()


def test_missing_adapter_is_a_clear_error_or_gets_loaded(server, tmp_path):
    trace = _trace(["tiny", "zz1"])
    opts = ReplayOptions(quiet=True)
    with pytest.raises(TwinbenchError, match="zz1 not served.*--load-adapters"):
        OpenAIBackend(OpenAIConfig(base_url=server.url)).prepare(trace, opts)
    with pytest.raises(TwinbenchError, match="refused to load it: HTTP 404: bad path"):
        OpenAIBackend(OpenAIConfig(base_url=server.url, load_adapters={"zz1": "/bad/zz1"})
                      ).prepare(trace, opts)
    with pytest.raises(TwinbenchError, match="--model nope: not served"):
        OpenAIBackend(OpenAIConfig(base_url=server.url, model="nope")).prepare(trace, opts)
    assert not (tmp_path / "run.jsonl").exists()
    run, info, _ = _run(tmp_path, trace, OpenAIConfig(
        base_url=server.url, scrape_interval_s=0, load_adapters={"zz1": "/ok/zz1"}))
    assert info.extra["adapters_loaded"] == ["zz1"]
    assert {r.adapter: r.status for r in run.records} == {None: "ok", "zz1": "ok"}


def test_requests_over_max_model_len_are_clipped_and_counted(server, tmp_path):
    trace = _trace(["tiny"] * 3, prompt=250, output=20)  # 270 > 256
    run, info, _ = _run(tmp_path, trace, OpenAIConfig(base_url=server.url, scrape_interval_s=0))
    assert info.extra["clipped_requests"] == 3
    for r in run.records:
        assert r.status == "ok" and r.prompt_tokens == 250 and r.requested_output_tokens == 6
        assert r.output_tokens == 6 and r.extra["clipped_from"] == [250, 20]
    (tmp_path / "run.jsonl").unlink()
    cfg = OpenAIConfig(base_url=server.url, scrape_interval_s=0, over_length="refuse")
    run, info, _ = _run(tmp_path, trace, cfg)
    assert info.extra["refused_requests"] == 3
    assert all(r.status == "error" and "max_model_len 256" in r.error and r.sent_s is None
               for r in run.records)


def test_chat_with_text_prompts_fitted_by_tokenize(server, tmp_path):
    cfg = OpenAIConfig(base_url=server.url, endpoint="chat", scrape_interval_s=0)
    run, info, _ = _run(tmp_path, _trace(["tiny", "a1"], prompt=30, output=5), cfg)
    assert info.extra["prompt_mode"] == "text" and info.extra["text_prompt_count_mismatch"] == 0
    for r in run.records:
        assert r.status == "ok" and r.output_tokens == 5
        # the role chunk is token-bearing (vLLM's rule) but carries no token
        assert len(r.chunk_times) == 6 and list(r.chunk_arrays()[1]) == [0] + [1] * 5
    bodies = [b for _, path, b in server.received if path.endswith("chat/completions")][-2:]
    for b in bodies:  # fake tokenizer: 5 template tokens + one per word
        assert len(b["messages"][0]["content"].split()) + 5 == 30
        assert b["max_completion_tokens"] == 5


def test_fake_server_answers_like_an_openai_server(server):
    """The official SDK streams from the test server, so the faults above are realistic."""
    import openai

    async def go():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        stream = await client.completions.create(
            model="a0", prompt=[300, 301, 302], max_tokens=4, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = [c async for c in stream]
        chat = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
            stream=True)
        chat_chunks = [c async for c in chat]
        with pytest.raises(openai.InternalServerError):
            await client.completions.create(model="e500", prompt="x", max_tokens=2)
        models = await client.models.list()
        await client.close()
        return chunks, chat_chunks, models

    chunks, chat_chunks, models = asyncio.run(go())
    assert [c.choices[0].text for c in chunks if c.choices] == [" t0", " t1", " t2", " t3"]
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].usage.prompt_tokens == 3
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    assert "a0" in [m.id for m in models.data]


def test_text_prompt_mode_on_completions(server, tmp_path):
    cfg = OpenAIConfig(base_url=server.url, prompt_mode="text", scrape_interval_s=0)
    run, info, _ = _run(tmp_path, _trace(["tiny", "a0", "a1"], prompt=25, output=3), cfg)
    assert info.extra["prompt_mode"] == "text" and info.extra["text_prompt_count_mismatch"] == 0
    assert all(r.status == "ok" and r.extra["prompt_tokens_server_count"] == 25
               for r in run.records)
    bodies = [b for _, path, b in server.received[-3:]]
    for b in bodies:  # fake tokenizer: one BOS + one per word
        assert isinstance(b["prompt"], str) and len(b["prompt"].split()) + 1 == 25
