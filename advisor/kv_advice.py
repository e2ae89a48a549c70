"""KV cache sizing: from the KV usage a chosen batch limit really reaches to vLLM flags.

The batch advisor's second half (arXiv 2503.08311): once `max_num_seqs` is chosen, most of
the KV pool is never touched, so size it to the p99 of the KV blocks in use plus a stated
margin and give the answer in the three forms vLLM accepts:
`--num-gpu-blocks-override`, `--kv-cache-memory-bytes`, `--gpu-memory-utilization`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class MemoryFacts:
    """What a server's memory is made of (bytes), as a twin profile states it."""

    device_bytes: float
    weights_bytes: float
    kv_bytes_per_token: float
    gpu_memory_utilization: float = 0.9
    other_bytes: float = 0.0          # activations, CUDA graphs: neither weights nor KV
    lora_bytes: float = 0.0           # LoRA slots (max_loras × max_lora_rank × per-rank-unit)

    @staticmethod
    def from_profile(profile, max_loras: int = 0, max_lora_rank: int = 16) -> "MemoryFacts":
        """Facts of a `twinbench.twin.profile.Profile` with `max_loras` LoRA slots reserved."""
        mem = profile.section("memory")
        return MemoryFacts(
            device_bytes=float(mem["device_bytes"]), weights_bytes=float(mem["weights_bytes"]),
            kv_bytes_per_token=float(mem["kv_bytes_per_token"]),
            gpu_memory_utilization=float(mem["gpu_memory_utilization"]),
            other_bytes=float(mem["non_kv_reserve_bytes"]),
            lora_bytes=max_loras * profile.lora_slot_bytes(max_lora_rank) if max_loras else 0.0)

    def kv_pool_bytes(self, utilization: float | None = None, share: float = 1.0) -> float:
        """KV pool of one server given `share` of the device (1/N for N replicas)."""
        u = self.gpu_memory_utilization if utilization is None else utilization
        return u * self.device_bytes * share - self.weights_bytes - self.other_bytes \
            - self.lora_bytes

    def blocks(self, block_size: int, utilization: float | None = None,
               share: float = 1.0) -> int:
        return max(0, int(self.kv_pool_bytes(utilization, share)
                          // (block_size * self.kv_bytes_per_token)))


@dataclass(frozen=True)
class KVAdvice:
    p99_blocks_used: float
    margin: float
    num_gpu_blocks: int
    kv_cache_memory_bytes: int | None     # None: no memory facts (a real server, no profile)
    gpu_memory_utilization: float | None
    current_blocks: int | None

    @property
    def saved_fraction(self) -> float | None:
        if not self.current_blocks:
            return None
        return max(0.0, 1.0 - self.num_gpu_blocks / self.current_blocks)

    def flags(self) -> list[str]:
        flags = [f"--num-gpu-blocks-override {self.num_gpu_blocks}"]
        if self.kv_cache_memory_bytes is not None:
            flags.append(f"--kv-cache-memory-bytes {self.kv_cache_memory_bytes}")
        if self.gpu_memory_utilization is not None:
            flags.append(f"--gpu-memory-utilization {self.gpu_memory_utilization:.2f}")
        return flags

    def to_dict(self) -> dict:
        return {"p99_blocks_used": self.p99_blocks_used, "margin": self.margin,
                "num_gpu_blocks": self.num_gpu_blocks,
                "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "current_blocks": self.current_blocks, "saved_fraction": self.saved_fraction,
                "flags": self.flags()}


def recommend_kv(p99_blocks_used: float, *, margin: float, block_size: int,
                 facts: MemoryFacts | None, current_blocks: int | None = None) -> KVAdvice:
    """Blocks = ceil(p99 × (1 + margin)); bytes and utilisation follow from the facts.

    Utilisation is rounded up to the next 0.01 so the pool it yields is never smaller than
    the blocks asked for (vLLM takes `util × device` then subtracts the rest).
    """
    if margin < 0:
        raise ValueError("margin must be >= 0")
    blocks = max(2, math.ceil(p99_blocks_used * (1.0 + margin)))
    if current_blocks:  # advice never exceeds what the server has now
        blocks = min(blocks, current_blocks)
    if facts is None:
        return KVAdvice(float(p99_blocks_used), margin, blocks, None, None, current_blocks)
    kv_bytes = blocks * block_size * facts.kv_bytes_per_token
    needed = kv_bytes + facts.weights_bytes + facts.other_bytes + facts.lora_bytes
    util = math.ceil(100.0 * needed / facts.device_bytes - 1e-9) / 100.0
    return KVAdvice(float(p99_blocks_used), margin, blocks, int(math.ceil(kv_bytes)),
                    util, current_blocks)


def kv_blocks_in_use(records: Iterable, block_size: int, times_s: np.ndarray) -> np.ndarray:
    """KV blocks held at each time, rebuilt from request records.

    A request holds ceil((prompt + tokens streamed so far) / block_size) blocks from its first
    token to its last (vLLM allocates the prompt at admission, a little earlier: the prefill
    time is left out, so this slightly under-counts; prefix sharing is ignored, which
    over-counts). Used when the backend reports no KV samples of its own.
    """
    times_s = np.asarray(times_s, dtype=float)
    used = np.zeros(len(times_s))
    for r in records:
        if r.first_token_s is None or r.end_s is None:
            continue
        chunk_t, chunk_n = r.chunk_arrays()
        lo, hi = np.searchsorted(times_s, [r.first_token_s, r.end_s], side="left")
        if hi <= lo:
            continue
        window = times_s[lo:hi]
        if len(chunk_t):
            generated = np.concatenate([[0], np.cumsum(chunk_n)])[
                np.searchsorted(chunk_t, window, side="right")]
        else:
            generated = np.zeros(len(window))
        used[lo:hi] += np.ceil((r.prompt_tokens + generated) / block_size)
    return used
