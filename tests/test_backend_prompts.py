"""Token-id and text prompts of the real backend: exact lengths, determinism, shared prefixes."""
import asyncio

import numpy as np

from twinbench.backends.prompts import PromptBuilder, fit_words
from twinbench.traces.core import Request, Trace


def _trace(prefixes, lengths, block=16):
    reqs = [Request(id=f"r{i}", arrival_s=float(i), adapter=None, prompt_tokens=n,
                    output_tokens=4, prefix_blocks=p)
            for i, (p, n) in enumerate(zip(prefixes, lengths))]
    return Trace.from_requests(reqs, meta={"prefix_block_tokens": block})


def test_ids_have_exact_length_and_stay_in_range():
    tr = _trace([None] * 6, [1, 2, 15, 16, 17, 1000])
    b = PromptBuilder.for_trace(tr, seed=3)
    for i, n in enumerate([1, 2, 15, 16, 17, 1000]):
        ids = b.token_ids(tr, i)
        assert len(ids) == n
        assert all(b.id_range[0] <= x < b.id_range[1] for x in ids)
    assert len(b.token_ids(tr, 5, length=7)) == 7


def test_ids_are_deterministic_per_request_and_seed():
    tr = _trace([None, None], [64, 64])
    a, a2, other = PromptBuilder.for_trace(tr, 1), PromptBuilder.for_trace(tr, 1), \
        PromptBuilder.for_trace(tr, 2)
    assert a.token_ids(tr, 0) == a2.token_ids(tr, 0)
    assert a.token_ids(tr, 0) != a.token_ids(tr, 1)   # different requests differ
    assert a.token_ids(tr, 0) != other.token_ids(tr, 0)  # different seeds differ
    # the same request id gives the same prompt in another trace (ids, not row numbers)
    tr2 = tr.select(np.array([1]))
    assert a.token_ids(tr2, 0) == a.token_ids(tr, 1)


def test_ids_look_random():
    tr = _trace([None], [20000])
    ids = np.array(PromptBuilder.for_trace(tr, 0).token_ids(tr, 0))
    lo, hi = PromptBuilder().id_range
    counts = np.bincount(ids - lo, minlength=hi - lo)
    assert counts.max() < 30 and len(np.unique(ids)) > 0.9 * (hi - lo)


def test_shared_prefix_blocks_share_ids_and_nothing_else():
    block = 8
    tr = _trace([(1, 2, 3), (1, 2, 9), (7,), None, (1, 2, 3)], [30, 40, 5, 24, 12], block=block)
    b = PromptBuilder.for_trace(tr, seed=0)
    assert b.block_tokens == block
    p = [b.token_ids(tr, i) for i in range(5)]
    assert [len(x) for x in p] == [30, 40, 5, 24, 12]
    assert p[0][:16] == p[1][:16]                    # blocks 1, 2 shared
    assert p[0][16:24] != p[1][16:24]                # block 3 vs block 9
    assert p[0][:12] == p[4]                         # a shorter prompt: a prefix of the blocks
    assert p[0][24:] != p[1][24:30]                  # own tails differ
    assert p[2] == b.block_ids(7).tolist()[:5]
    assert p[3][:8] != p[0][:8]


def test_words_follow_ids_and_fit_to_a_counter():
    tr = _trace([(5,), (5,)], [20, 20])
    b = PromptBuilder.for_trace(tr, 0)
    w0, w1 = b.words(tr, 0, 20), b.words(tr, 1, 20)
    assert len(w0) == 20 and w0[:16] == w1[:16] and w0 != w1

    async def count(text):  # a tokenizer that adds 3 template tokens and splits long words
        return 3 + sum(2 if len(w) > 5 else 1 for w in text.split())

    text, n = asyncio.run(fit_words(b, tr, 0, 40, count))
    assert n == asyncio.run(count(text))
    assert abs(n - 40) <= 1

    async def cannot(text):
        return None

    text, n = asyncio.run(fit_words(b, tr, 0, 40, cannot))
    assert n is None and len(text.split()) == 40
