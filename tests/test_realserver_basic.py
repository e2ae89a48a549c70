"""The real vLLM CPU server fixture itself: up, adapters listed, exact usage on streams."""
from __future__ import annotations

import json
import urllib.request


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def stream_completion(url: str, body: dict) -> list[dict]:
    """POST a streaming request; the parsed `data:` messages before `[DONE]`."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    messages = []
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            messages.append(json.loads(payload))
    return messages


def test_models_lists_base_and_every_adapter(vllm_server):
    models = get_json(vllm_server.base_url + "/v1/models")["data"]
    by_id = {m["id"]: m for m in models}
    config = vllm_server.server_config()
    # (other tests of the session may have registered more adapters at runtime)
    assert set(by_id) >= {config["served_model_name"], *config["lora_modules"]}
    assert len(config["lora_modules"]) >= 4 and config["max_loras"] == 2
    assert by_id[config["served_model_name"]]["max_model_len"] == config["max_model_len"]
    for name in set(by_id) - {config["served_model_name"]}:
        assert by_id[name]["parent"] == config["served_model_name"]


def test_kv_capacity_parsed_from_the_server_log(vllm_server):
    config = vllm_server.server_config()
    assert config["kv_cache_tokens"] > 0
    assert config["num_gpu_blocks"] * config["block_size"] == config["kv_cache_tokens"]
    text = urllib.request.urlopen(vllm_server.base_url + "/metrics", timeout=30).read().decode()
    info = [ln for ln in text.splitlines() if ln.startswith("vllm:cache_config_info{")]
    assert info and f'num_gpu_blocks="{config["num_gpu_blocks"]}"' in info[0]


def test_streamed_token_id_completion_has_exact_usage(vllm_server):
    prompt = [(17 * i) % 3000 + 100 for i in range(37)]  # ids inside the 4096 vocabulary
    for model in ("tiny", "a2"):
        messages = stream_completion(vllm_server.base_url + "/v1/completions", {
            "model": model, "prompt": prompt, "max_tokens": 9, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}})
        token_chunks = [m for m in messages if m["choices"]]
        usage = [m["usage"] for m in messages if not m["choices"]]
        assert len(token_chunks) == 9
        assert len(usage) == 1
        assert (usage[0]["prompt_tokens"], usage[0]["completion_tokens"]) == (37, 9)
        assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
