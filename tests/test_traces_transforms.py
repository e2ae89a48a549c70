"""Transforms and adapter assignment: exact effects, recorded in meta, distributions."""
from __future__ import annotations

import numpy as np
import pytest

from twinbench.traces import (Request, Trace, assign_adapters, bundled, clip_lengths, head,
                              inspect_stats, load, merge, rescale_rate, shift_to_zero,
                              subsample, time_scale, window)
from twinbench.traces.core import TraceError


@pytest.fixture(scope="module")
def conv() -> Trace:
    return load(bundled("azure_conv"))


def test_window_selects_and_rebases(conv):
    w = window(conv, 100.0, 200.0)
    inside = conv.arrival_s[(conv.arrival_s >= 100) & (conv.arrival_s < 200)]
    assert np.array_equal(w.arrival_s, inside - 100.0)
    assert w.meta["transforms"][-1].startswith("window(100")
    assert conv.meta["transforms"] == []  # the input is untouched
    with pytest.raises(TraceError):
        window(conv, 5, 5)


def test_time_scale_and_rescale_rate(conv):
    fast = time_scale(conv, 2.0)
    assert np.allclose(fast.arrival_s, conv.arrival_s / 2)
    r = rescale_rate(conv, 10.0)
    assert inspect_stats(r)["mean_rate_rps"] == pytest.approx(10.0)
    # burstiness (CV) is a property of shape, unchanged by rescaling
    assert inspect_stats(r)["interarrival_cv"] == pytest.approx(
        inspect_stats(conv)["interarrival_cv"])
    assert np.array_equal(r.prompt_tokens, conv.prompt_tokens)


def test_subsample_is_seeded_and_exact_in_size(conv):
    a, b, c = subsample(conv, 0.25, seed=1), subsample(conv, 0.25, seed=1), \
        subsample(conv, 0.25, seed=2)
    assert len(a) == round(0.25 * len(conv))
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert np.all(np.diff(a.arrival_s) >= 0)


def test_clip_lengths_fits_max_model_len(conv):
    c = clip_lengths(conv, 2048)
    assert int((c.prompt_tokens + c.output_tokens).max()) <= 2048
    assert c.prompt_tokens.min() >= 1 and c.output_tokens.min() >= 1
    fits = (conv.prompt_tokens + conv.output_tokens) <= 2048
    assert np.array_equal(c.prompt_tokens[fits], conv.prompt_tokens[fits])
    assert c.meta["clipped_requests"] == int((~fits).sum())


def test_head_and_shift(conv):
    h = head(conv, 10)
    assert len(h) == 10 and np.array_equal(h.arrival_s, conv.arrival_s[:10])
    later = window(conv, 50, None, rebase=False)
    assert shift_to_zero(later).arrival_s[0] == 0.0


def test_merge_makes_tenants_and_keeps_everything():
    a = load(bundled("azure_conv"))
    m = load(bundled("mooncake"))
    a2 = assign_adapters(a, "round-robin", 2)
    out = merge([a2, m], tenants=["conv", "mooncake"])
    assert len(out) == len(a) + len(m)
    assert np.all(np.diff(out.arrival_s) >= 0)
    assert out.tenants == ["conv", "mooncake"]
    counts = np.bincount(out.tenant_idx)
    assert counts.tolist() == [len(a), len(m)]
    assert len(set(out.ids.tolist())) == len(out)
    # Mooncake's shared prefixes survive (relative structure), conv requests get none
    mk = [r for r in out if r.tenant == "mooncake"]
    orig = list(m)
    assert [len(r.prefix_blocks) for r in mk] == [len(r.prefix_blocks) for r in orig]
    same_a = orig[0].prefix_blocks[0] == orig[1].prefix_blocks[0]
    assert (mk[0].prefix_blocks[0] == mk[1].prefix_blocks[0]) == same_a
    assert out.meta["prefix_block_tokens"] == 512
    assert {r.adapter for r in out if r.tenant == "conv"} == {"lora-0", "lora-1"}


def test_merge_refuses_conflicting_adapter_catalogs():
    from twinbench.traces import Adapter
    t1 = Trace.from_requests([Request("1", 0.0, "x", 5, 5)], adapters=[Adapter("x", 8)])
    t2 = Trace.from_requests([Request("1", 0.0, "x", 5, 5)], adapters=[Adapter("x", 16)])
    with pytest.raises(TraceError, match="differs"):
        merge([t1, t2])


def many(n: int = 60_000) -> Trace:
    return Trace(arrival_s=np.arange(n, dtype=float), adapter_idx=np.full(n, -1),
                 prompt_tokens=np.ones(n), output_tokens=np.ones(n))


def test_round_robin_and_rank_cycle():
    t = assign_adapters(many(10), "round-robin", 4, ranks=(8, 16, 32))
    assert t.adapter_idx.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert [a.rank for a in t.adapters] == [8, 16, 32, 8]
    assert [a.name for a in t.adapters] == ["lora-0", "lora-1", "lora-2", "lora-3"]


@pytest.mark.parametrize("scheme,n,weights", [("uniform", 8, None), ("zipf:1.0", 16, None),
                                              ("zipf:1.5", 6, None),
                                              ("weights", 3, [0.6, 0.3, 0.1])])
def test_random_schemes_follow_their_distribution(scheme, n, weights):
    t = assign_adapters(many(), scheme, n, seed=5, weights=weights)
    freq = np.bincount(t.adapter_idx, minlength=n) / len(t)
    if scheme == "uniform":
        expect = np.full(n, 1 / n)
    elif scheme.startswith("zipf"):
        s = float(scheme.split(":")[1])
        expect = 1 / np.arange(1, n + 1) ** s
        expect /= expect.sum()
    else:
        expect = np.array(weights)
    # binomial standard error at n=60,000 is < 0.002; allow 5 of them
    assert np.abs(freq - expect).max() < 5 * np.sqrt(expect * (1 - expect) / len(t)).max()
    again = assign_adapters(many(), scheme, n, seed=5, weights=weights)
    assert np.array_equal(t.adapter_idx, again.adapter_idx)


def test_tenant_scheme_maps_busiest_tenants_first():
    sg = load(bundled("servegen"), window=(0, 60))
    t = assign_adapters(sg, "tenant", None)
    names = [r.adapter for r in t]
    assert names == [r.tenant for r in sg]
    counts = np.bincount(sg.tenant_idx)
    top = assign_adapters(sg, "tenant", 1)
    busiest = sg.tenants[int(np.argmax(counts))]
    assert [a.name for a in top.adapters] == [busiest]
    assert int((top.adapter_idx == 0).sum()) == int(counts.max())
    assert int((top.adapter_idx == -1).sum()) == len(sg) - int(counts.max())
    with pytest.raises(TraceError, match="tenants"):
        assign_adapters(load(bundled("azure_conv")), "tenant", None)
