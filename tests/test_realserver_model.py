"""The tiny model build: deterministic for a seed, cached by content; server flags explicit."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from twinbench.backends.vllm_cpu import (VLLMEnvError, VLLMServer, VLLMServerFlags,
                                         build_tiny_model, ensure_env, server_config,
                                         tiny_model_key)


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 per file; adapter configs without the one field that names the folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.name == "adapter_config.json":
            config = json.loads(data)
            assert config.pop("base_model_name_or_path") == str(root / "base")
            data = json.dumps(config, sort_keys=True).encode()
        out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.mark.parametrize("which", ["all", "absent"])
def test_engine_cpus_that_leave_the_api_server_nothing_are_refused_before_starting(
        tmp_path, which):
    allowed = sorted(os.sched_getaffinity(0))
    cpus = tuple(allowed) if which == "all" else (max(allowed) + 1,)
    server = VLLMServer(model_root=tmp_path, engine_cpus=cpus, python=tmp_path / "no-python")
    with pytest.raises(VLLMEnvError, match="engine_cpus"):
        server.start()
    assert server.process is None


def test_every_scheduler_flag_is_explicit():
    argv = VLLMServerFlags(enable_chunked_prefill=False).to_argv()
    for flag in ("--max-num-seqs", "--max-num-batched-tokens", "--no-enable-chunked-prefill",
                 "--no-enable-prefix-caching", "--block-size", "--max-loras", "--max-cpu-loras",
                 "--max-lora-rank", "--max-model-len", "--kv-cache-memory-bytes",
                 "--long-prefill-token-threshold", "--scheduling-policy"):
        assert flag in argv, flag
    config = server_config()
    assert config["max_loras"] == 2 and config["block_size"] % 32 == 0
    assert tiny_model_key(0, (8, 16)) != tiny_model_key(1, (8, 16))
    assert tiny_model_key(0, (8, 16)) != tiny_model_key(0, (8, 8))


@pytest.mark.realserver
def test_build_is_deterministic_and_cached(tmp_path):
    python = ensure_env()
    cached = build_tiny_model(python=python)            # the session's copy (built once)
    # one adapter only (cheaper); a0 has the same rank and seed as the default build's a0
    fresh = build_tiny_model(tmp_path / "m", python=python, ranks=(8,))
    fresh_digest = digest_tree(fresh)
    cached_digest = digest_tree(cached)
    assert {"base/config.json", "base/model.safetensors", "base/tokenizer.json",
            "loras/a0/adapter_config.json", "loras/a0/adapter_model.safetensors"} \
        <= set(fresh_digest)
    for name, digest in fresh_digest.items():          # same seed -> identical files
        if name != "twinbench-build.json":
            assert cached_digest[name] == digest, name
    ranks = [json.loads((cached / "loras" / a / "adapter_config.json").read_text())["r"]
             for a in ("a0", "a1", "a2", "a3")]
    assert ranks == [8, 16, 8, 16]
    mtime = (fresh / "base" / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "m", python=python, ranks=(8,)) == fresh  # reused
    assert (fresh / "base" / "model.safetensors").stat().st_mtime_ns == mtime
    other = tmp_path / "not-a-model"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(VLLMEnvError):
        build_tiny_model(other, python=python)
    assert (other / "keep.txt").read_text() == "user data"
