"""`twinbench serve` driven by the `openai` SDK: its simulated times equal the in-process twin's.

Requests carry their trace arrival in the `twin_arrival_s` extension field, so the served twin
runs on the client's clock and every streamed chunk's `twin.t_ns` must equal the token times
`twinbench.twin.simulate()` computes for the same trace, config and profile — exactly.
"""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import aiohttp
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from twinbench.traces.core import Adapter, Request, Trace
from twinbench.twin.simulation import simulate
from twinbench.twin.config import ServerConfig

PROFILE = "llama-3.1-8b-h100"
ADAPTERS = ["a0", "a1", "a2", "a3"]
# small limits so that the adapter gate, max_num_seqs and KV pressure (preemption) all act
FLAGS = {"max_num_seqs": 6, "max_num_batched_tokens": 512, "max_loras": 2, "max_cpu_loras": 3,
         "num_gpu_blocks": 120, "block_size": 16, "enable_prefix_caching": False,
         "max_model_len": 1024}


def serve_flags() -> list[str]:
    flags = ["--profile", PROFILE, "--lora-modules", *ADAPTERS, "--max-request-bytes", "65536",
             "--client-clock-slack-ms", "2500"]  # generous: CI machines are busy
    for name, value in FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def make_trace(n: int = 24, seed: int = 11) -> Trace:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / 25, n))
    reqs = [Request(id=f"r{i}", arrival_s=float(arrivals[i]),
                    adapter=[None, *ADAPTERS][int(rng.integers(0, 5))],
                    prompt_tokens=int(rng.integers(20, 300)),
                    output_tokens=int(rng.integers(2, 40))) for i in range(n)]
    return Trace.from_requests(reqs, adapters=[Adapter(a, rank=16) for a in ADAPTERS])


@pytest.fixture(scope="module")
def base_url(twin_server_launcher):
    return twin_server_launcher(*serve_flags())


async def sdk_replay(base_url: str, trace: Trace, base_model: str, chat: bool) -> dict:
    """Send every request at its arrival (open loop); collect the `twin` fields per request."""
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    loop = asyncio.get_running_loop()
    origin = loop.time() + 0.1

    async def one(i: int) -> tuple[str, dict]:
        r = trace[i]
        await asyncio.sleep(max(0.0, origin + r.arrival_s - loop.time()))
        common = dict(model=r.adapter or base_model, max_tokens=r.output_tokens, stream=True,
                      stream_options={"include_usage": True},
                      extra_body={"ignore_eos": True, "twin_arrival_s": r.arrival_s})
        if chat:
            stream = await client.chat.completions.create(
                messages=[{"role": "user", "content": " ".join(["w"] * r.prompt_tokens)}],
                **common)
        else:
            stream = await client.completions.create(
                prompt=list(range(100, 100 + r.prompt_tokens)), **common)
        times, roles, usage, summary = [], 0, None, None
        async for chunk in stream:
            twin = chunk.model_extra["twin"]
            if chunk.choices:
                if chat and chunk.choices[0].delta.role == "assistant":
                    roles += 1
                    continue
                times += [twin["t_ns"]] * twin["tokens"]
            elif chunk.usage is not None:
                usage, summary = chunk.usage, twin
        return r.id, {"times": times, "usage": usage, "summary": summary, "roles": roles}

    try:
        return dict(await asyncio.gather(*(one(i) for i in range(len(trace)))))
    finally:
        await client.close()


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_sdk_stream_times_equal_in_process_twin(base_url, chat):
    trace = make_trace(seed=11 if not chat else 12)
    models = json.loads(urllib.request.urlopen(base_url + "/v1/models").read())["data"]
    base = [m["id"] for m in models if m["parent"] is None][0]
    got = asyncio.run(sdk_replay(base_url, trace, base, chat))
    result = simulate(trace, ServerConfig(**FLAGS), PROFILE)
    expected = result.records
    assert len(expected) == len(trace)
    for rec in expected:
        g = got[rec.id]
        assert rec.status == "ok"
        assert g["usage"].completion_tokens == rec.output_tokens == rec.requested_output_tokens
        assert g["usage"].prompt_tokens == rec.prompt_tokens
        assert g["summary"]["arrival_ns"] == round(rec.arrival_s * 1e9)
        assert "arrival_late_ns" not in g["summary"]
        assert g["times"] == np.rint(rec.chunk_times * 1e9).astype(np.int64).tolist()
        assert g["summary"]["first_token_ns"] == g["times"][0]
        assert g["summary"]["finish_ns"] == g["times"][-1]
        assert g["roles"] == (1 if chat else 0)
    # not a trivial run: adapters were evicted from the 2 GPU slots and loaded again
    assert result.stats["gpu_loads"] > len(ADAPTERS)


def post(url: str, body: dict) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def test_non_streaming_usage_and_twin_fields(base_url):
    status, body = post(base_url + "/v1/completions",
                        {"model": "a1", "prompt": "one two three four", "max_tokens": 5})
    assert status == 200
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    twin = body["twin"]
    assert len(twin["token_times_ns"]) == 5 and twin["token_times_ns"] == sorted(
        twin["token_times_ns"])
    assert twin["arrival_ns"] < twin["first_token_ns"] == twin["token_times_ns"][0]
    assert body["choices"][0]["finish_reason"] == "length"


def test_errors_have_openai_shape(base_url):
    status, body = post(base_url + "/v1/completions", {"model": "nope", "prompt": [1, 2]})
    assert status == 404 and body["error"]["type"] == "NotFoundError"
    assert body["error"]["code"] == 404 and body["error"]["param"] == "model"
    status, body = post(base_url + "/v1/completions",
                        {"model": "a0", "prompt": [5] * 200_000, "max_tokens": 1})
    assert status == 413 and body["error"]["code"] == 413
    status, body = post(base_url + "/v1/completions", {"model": "a0", "prompt": [5] * 9000})
    assert status == 400 and "maximum context length" in body["error"]["message"]
    status, body = post(base_url + "/v1/completions", {"model": "a0", "prompt": [1],
                                                       "max_tokens": 0})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi", max_tokens=2)


def test_runtime_adapter_loading(base_url, tmp_path):
    folder = tmp_path / "lora9"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    status, body = post(base_url + "/v1/load_lora_adapter",
                        {"lora_name": "a9", "lora_path": str(tmp_path / "missing")})
    assert status == 404
    status, body = post(base_url + "/v1/load_lora_adapter",
                        {"lora_name": "a9", "lora_path": str(folder)})
    assert status == 200 and "added successfully" in body
    ids = [m["id"] for m in json.loads(urllib.request.urlopen(base_url + "/v1/models").read())
           ["data"]]
    assert "a9" in ids
    status, body = post(base_url + "/v1/load_lora_adapter",
                        {"lora_name": "a9", "lora_path": str(folder)})
    assert status == 400  # already loaded
    # ...which the backend's loader takes as done (a run after one that registered it)
    from twinbench.backends.openai_probe import load_adapter

    async def load_again():
        async with aiohttp.ClientSession() as session:
            await load_adapter(session, base_url, {}, "a9", str(folder))
    asyncio.run(load_again())
    status, body = post(base_url + "/v1/completions",
                        {"model": "a9", "prompt": [1, 2, 3], "max_tokens": 2})
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    status, body = post(base_url + "/v1/unload_lora_adapter", {"lora_name": "a9"})
    assert status == 200
    status, body = post(base_url + "/v1/completions", {"model": "a9", "prompt": [1]})
    assert status == 404
    status, body = post(base_url + "/v1/unload_lora_adapter", {"lora_name": "a9"})
    assert status == 404


def test_info_endpoints(base_url):
    assert urllib.request.urlopen(base_url + "/health").status == 200
    version = json.loads(urllib.request.urlopen(base_url + "/version").read())
    assert version["version"].startswith("0.32") and version["twinbench"]["twin"] is True
    models = json.loads(urllib.request.urlopen(base_url + "/v1/models").read())["data"]
    base = [m for m in models if m["parent"] is None]
    assert len(base) == 1 and base[0]["max_model_len"] > 0
    assert {m["id"] for m in models if m["parent"]} >= set(ADAPTERS)
    status, body = post(base_url + "/tokenize", {"prompt": "a b  c\nd"})
    assert status == 200 and body["count"] == 4
    text = urllib.request.urlopen(base_url + "/metrics").read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:num_preemptions", "vllm:lora_requests_info",
                 "vllm:cache_config_info", "vllm:time_to_first_token_seconds"):
        assert name in families, name
    cache = families["vllm:cache_config_info"].samples[0].labels
    assert cache["num_gpu_blocks"] == str(FLAGS["num_gpu_blocks"])
    lora = families["vllm:lora_requests_info"].samples[0].labels
    assert lora["max_lora"] == str(FLAGS["max_loras"])
