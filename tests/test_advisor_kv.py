"""KV sizing from observed usage, and KV usage rebuilt from records."""
from __future__ import annotations

import math

import numpy as np
import pytest

from twinbench.advisor.kv_advice import MemoryFacts, kv_blocks_in_use, recommend_kv
from twinbench.reports.records import RequestRecord

GB = 1e9
# seed paper, OPT-1.3B on a 64 GB H100: 192 KiB/token, weights 3.11 GB, pool 54.48 GB at 0.9
OPT13 = MemoryFacts(device_bytes=64 * GB, weights_bytes=3.11 * GB,
                    kv_bytes_per_token=192 * 1024, gpu_memory_utilization=0.9,
                    other_bytes=(0.9 * 64 - 3.11 - 54.48) * GB)


def test_pool_matches_the_paper():
    assert OPT13.kv_pool_bytes() == pytest.approx(54.48 * GB)


@pytest.mark.parametrize("p99,margin", [(1000.0, 0.1), (1234.5, 0.25), (10.0, 0.0)])
def test_recommendation_is_tight_and_sufficient(p99, margin):
    advice = recommend_kv(p99, margin=margin, block_size=16, facts=OPT13,
                          current_blocks=OPT13.blocks(16))
    assert advice.num_gpu_blocks == math.ceil(p99 * (1 + margin))
    assert advice.kv_cache_memory_bytes >= advice.num_gpu_blocks * 16 * 192 * 1024
    # the utilisation flag yields at least the blocks asked for, 0.01 less does not
    assert OPT13.blocks(16, advice.gpu_memory_utilization) >= advice.num_gpu_blocks
    assert OPT13.blocks(16, advice.gpu_memory_utilization - 0.01) < advice.num_gpu_blocks
    assert 0 < advice.saved_fraction < 1
    assert f"--num-gpu-blocks-override {advice.num_gpu_blocks}" in advice.flags()


def test_negative_margin_refused():
    with pytest.raises(ValueError):
        recommend_kv(10, margin=-0.1, block_size=16, facts=OPT13)


def rec(i, prompt, first, chunk_times):
    t = np.array(chunk_times, dtype=float)
    return RequestRecord(id=str(i), adapter=None, arrival_s=0.0, prompt_tokens=prompt,
                         requested_output_tokens=len(t), status="ok", sent_s=0.0,
                         first_token_s=first, end_s=float(t[-1]), output_tokens=len(t),
                         chunk_times=t, chunk_tokens=np.ones(len(t), dtype=np.int32))


def test_kv_usage_from_records():
    # request A: 30-token prompt, tokens at 1,2,3 s; request B: 16-token prompt, tokens at 2,4 s
    records = [rec(0, 30, 1.0, [1.0, 2.0, 3.0]), rec(1, 16, 2.0, [2.0, 4.0])]
    times = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.5, 4.5])
    used = kv_blocks_in_use(records, 16, times)
    # at 1.0: A holds ceil(31/16)=2; 1.5: 2; 2.0: A ceil(32/16)=2 + B ceil(17/16)=2;
    # 2.5: A 2 + B 2; 3.5: A has ended (end 3.0), B 2; 4.5: nothing
    assert used.tolist() == [0, 2, 2, 4, 4, 2, 0]


def test_a_kv_bound_batch_keeps_the_pool():
    advice = recommend_kv(1000.0, margin=0.1, block_size=16, facts=OPT13, current_blocks=1050)
    assert advice.num_gpu_blocks == 1050 and advice.saved_fraction == 0.0
