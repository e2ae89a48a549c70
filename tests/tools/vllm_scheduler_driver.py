"""Drive vLLM's own V1 `Scheduler` with no model and print its per-step decisions as JSON.

Run with the vLLM environment's python (twinbench.backends.vllm_cpu.env_python()):

    python vllm_scheduler_driver.py < cases.json > steps.json

Input: a JSON list of cases {"config": {max_num_seqs, max_num_batched_tokens, max_model_len,
enable_chunked_prefill, long_prefill_token_threshold, num_gpu_blocks, block_size, max_loras,
max_lora_rank}, "requests": [{"id", "arrival_step", "prompt", "output", "adapter": name|null,
"lora_id"}]}. Requests with arrival_step k are added before the k-th schedule() call; steps
in which nothing is unfinished are skipped (vLLM would idle). Output: per case, the list of
steps {"k": step index, "scheduled": [[id, tokens], ...] (running order, then admissions),
"new": [...], "resumed": [...], "preempted": [...], "loras": [names]}.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def _model_dir() -> str:
    d = tempfile.mkdtemp(prefix="vllm-sched-model-")
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096,
           "hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
           "max_position_embeddings": 1 << 20, "torch_dtype": "bfloat16",
           "tie_word_embeddings": False, "rms_norm_eps": 1e-5}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    return d


def build_scheduler(c: dict, model_dir: str):
    import torch
    from vllm.config import CacheConfig, LoRAConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    model_config = ModelConfig(model=model_dir, skip_tokenizer_init=True,
                               max_model_len=c["max_model_len"])
    sched = SchedulerConfig(max_num_seqs=c["max_num_seqs"],
                            max_num_batched_tokens=c["max_num_batched_tokens"],
                            max_model_len=c["max_model_len"],
                            enable_chunked_prefill=c["enable_chunked_prefill"],
                            long_prefill_token_threshold=c["long_prefill_token_threshold"],
                            is_encoder_decoder=False)
    cache = CacheConfig(block_size=c["block_size"],
                        enable_prefix_caching=bool(c.get("enable_prefix_caching", False)))
    lora = LoRAConfig(max_loras=c["max_loras"], max_lora_rank=c["max_lora_rank"])
    vc = VllmConfig(model_config=model_config, scheduler_config=sched, cache_config=cache,
                    lora_config=lora)
    vc.cache_config.num_gpu_blocks = c["num_gpu_blocks"]
    spec = FullAttentionSpec(block_size=c["block_size"], num_kv_heads=1, head_size=1,
                             dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=c["num_gpu_blocks"], kv_cache_tensors=[],
                       kv_cache_groups=[KVCacheGroupSpec(["layer.0"], spec)])
    return Scheduler(vc, kv, StructuredOutputManager(vc), c["block_size"], log_stats=False)


def prompt_ids(r: dict, block_tokens: int) -> list[int]:
    """Token ids: each shared prefix hash id stands for block_tokens fixed tokens, the rest of
    the prompt is unique to the request (so only declared prefixes can hit the cache)."""
    ids: list[int] = []
    for h in r.get("prefix") or ():
        ids.extend(int(h) * 1000 + j for j in range(block_tokens))
    ids = ids[:int(r["prompt"])]
    tail = int(r["prompt"]) - len(ids)
    base = 10_000_000 + int(r["id"].lstrip("r")) * 10_000
    return ids + [base + j for j in range(tail)]


def run_case(case: dict, model_dir: str) -> list[dict]:
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import SamplingParams
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request

    s = build_scheduler(case["config"], model_dir)
    hasher = None
    if case["config"].get("enable_prefix_caching"):
        from vllm.utils.hashing import get_hash_fn_by_name
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash

        hash_fn = get_hash_fn_by_name(s.cache_config.prefix_caching_hash_algo)
        init_none_hash(hash_fn)
        hasher = get_request_block_hasher(case["config"]["block_size"], hash_fn)
    block_tokens = int(case["config"].get("prefix_block_tokens", 0))
    by_step: dict[int, list[dict]] = {}
    for r in case["requests"]:
        by_step.setdefault(int(r["arrival_step"]), []).append(r)
    last_arrival = max(by_step) if by_step else -1
    names = {}
    steps = []
    k = 0
    while True:
        for r in by_step.get(k, []):
            lora = None
            if r.get("adapter"):
                lora = LoRARequest(r["adapter"], int(r["lora_id"]), "/nonexistent/" + r["adapter"])
                names[int(r["lora_id"])] = r["adapter"]
            s.add_request(Request(r["id"], prompt_ids(r, block_tokens),
                                  sampling_params=SamplingParams(max_tokens=int(r["output"]),
                                                                 ignore_eos=True),
                                  pooling_params=None, lora_request=lora, arrival_time=float(k),
                                  block_hasher=hasher))
        if not s.has_unfinished_requests():
            if k > last_arrival:
                break
            k += 1
            continue
        out = s.schedule()
        ids = list(out.num_scheduled_tokens)
        sampled = [[] if s.requests[i].is_prefill_chunk else [11] for i in ids]
        mro = ModelRunnerOutput(req_ids=ids, req_id_to_index={i: n for n, i in enumerate(ids)},
                                sampled_token_ids=sampled)
        loras = sorted({names[s.requests[i].lora_request.lora_int_id] for i in ids
                        if s.requests[i].lora_request is not None})
        steps.append({"k": k, "scheduled": [[i, out.num_scheduled_tokens[i]] for i in ids],
                      "new": [r.req_id for r in out.scheduled_new_reqs],
                      "resumed": sorted(out.scheduled_cached_reqs.resumed_req_ids),
                      "preempted": sorted(out.preempted_req_ids or ()), "loras": loras})
        s.update_from_output(out, mro)
        k += 1
    return steps


def main() -> int:
    cases = json.load(sys.stdin)
    model_dir = _model_dir()
    results = [run_case(c, model_dir) for c in cases]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
