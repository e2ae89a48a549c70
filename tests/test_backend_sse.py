"""The incremental SSE parser: any split of a stream gives the same events."""
import json
import random

from twinbench.backends.server_metrics import parse_cache_config, parse_metrics
from twinbench.backends.sse import SSEParser


def _stream(n, newline=b"\n"):
    parts = [b": keep-alive" + newline + newline]
    for k in range(n):
        parts.append(b"data: " + json.dumps({"choices": [{"text": f"t{k}\u00e9"}]}).encode()
                     + newline + newline)
    parts.append(b"event: done" + newline + b"data:line1" + newline + b"data: line2"
                 + newline + newline)
    parts.append(b"data: [DONE]" + newline + newline)
    return b"".join(parts)


def _feed_all(raw, cuts):
    p = SSEParser()
    out = []
    last = 0
    for c in sorted(cuts) + [len(raw)]:
        out.extend(p.feed(raw[last:c]))
        last = c
    return out, p


def test_random_splits_give_identical_events():
    rng = random.Random(7)
    for newline in (b"\n", b"\r\n", b"\r"):
        raw = _stream(30, newline)
        whole, _ = _feed_all(raw, [])
        assert len(whole) == 32
        assert whole[-2] == (b"done", b"line1\nline2")
        assert whole[-1] == (b"", b"[DONE]")
        assert json.loads(whole[3][1]) == {"choices": [{"text": "t3\u00e9"}]}
        for _ in range(50):
            cuts = rng.sample(range(1, len(raw)), rng.randint(1, 40))
            got, p = _feed_all(raw, cuts)
            assert got == whole
            assert not p.pending
        # byte by byte
        got, _ = _feed_all(raw, list(range(1, len(raw))))
        assert got == whole


def test_one_message_per_read_gives_identical_events():
    """A read holding exactly one message takes a short path: same result, and it defers to
    the full parser when a previous read left state behind."""
    raw = _stream(30)
    whole, _ = _feed_all(raw, [])
    ends = [i + 2 for i in range(len(raw)) if raw[i:i + 2] == b"\n\n"]
    got, p = _feed_all(raw, ends[:-1])
    assert got == whole and p.events == len(whole) and not p.pending
    p = SSEParser()
    assert p.feed(b"event: done\n") == []
    assert p.feed(b"data: x\n\n") == [(b"done", b"x")]
    assert p.feed(b"data: a") == [] and p.feed(b"data: b\n\n") == [(b"", b"adata: b")]
    assert p.feed(b"data: c\r\r") == [(b"", b"c")]
    assert p.feed(b"\ndata: d\n\n") == [(b"", b"d")]


def test_event_cut_mid_way_is_pending_not_emitted():
    p = SSEParser()
    assert p.feed(b'data: {"a": 1}\n\ndata: {"b"') == [(b"", b'{"a": 1}')]
    assert p.pending
    assert p.feed(b"") == []


def test_metrics_parse_with_prometheus_parser():
    text = """# HELP vllm:num_requests_running x
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m",engine="0"} 3.0
vllm:num_requests_running{model_name="m",engine="1"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="m"} 4.0
vllm:num_preemptions_created{model_name="m"} 1.7e9
# TYPE vllm:request_num_preemptions histogram
vllm:request_num_preemptions_count{model_name="m"} 99.0
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="x,y",waiting_lora_adapters="z"} 20.0
vllm:lora_requests_info{max_lora="2",running_lora_adapters="x",waiting_lora_adapters=""} 10.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",num_gpu_blocks="2048",num_cpu_blocks="None",engine="0"} 1.0
"""
    m = parse_metrics(text)
    assert m["running"] == 5.0 and m["waiting"] == 7.0 and m["kv_usage"] == 0.5
    assert m["preemptions_total"] == 4.0
    assert m["lora"] == {"max_lora": 2, "running": ["x", "y"], "waiting": ["z"]}
    cc = parse_cache_config(text)
    assert cc["num_gpu_blocks"] == 2048 and cc["block_size"] == 16
    assert parse_metrics("# nothing here\n") == {}
