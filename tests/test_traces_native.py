"""Native formats round-trip exactly: columns, adapter catalog, ids, tenants, prefix blocks,
prompts, priorities (property test over generated traces, plus the bundled real slices)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinbench.traces import Adapter, Request, Trace, bundled, load, save
from twinbench.traces.core import TraceError
from twinbench.traces.transforms import equal

EXTS = ("jsonl", "csv", "npz")
# single-line, non-empty names with the characters CSV and JSON must escape
names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8)
tricky = st.sampled_from(['a,b', 'say "hi"', ' lead', 'trail ', 'ünï', '{"x":1}', '#1', '0'])


@st.composite
def traces(draw) -> Trace:
    n = draw(st.integers(1, 12))
    adapter_names = draw(st.lists(names | tricky, min_size=0, max_size=4, unique=True))
    catalog = [Adapter(a, draw(st.sampled_from([8, 16, 32, 64])),
                       draw(st.none() | st.just(f"/adapters/{k}"))) for k, a in
               enumerate(adapter_names)]
    with_ids = draw(st.booleans())
    with_tenants = draw(st.booleans())
    with_prefix = draw(st.booleans())
    with_prompts = draw(st.booleans())
    tenants = draw(st.lists(names | tricky, min_size=1, max_size=3, unique=True))
    times = sorted(draw(st.lists(st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
                                 min_size=n, max_size=n)))
    reqs = []
    for i in range(n):
        reqs.append(Request(
            id=draw(names | tricky) + f"#{i}" if with_ids else str(i),
            arrival_s=times[i],
            adapter=draw(st.none() | st.sampled_from(adapter_names)) if adapter_names else None,
            prompt_tokens=draw(st.integers(1, 2**31 - 1)),
            output_tokens=draw(st.integers(1, 100_000)),
            prefix_blocks=tuple(draw(st.lists(st.integers(-2**62, 2**62), max_size=4)))
            if with_prefix else None,
            prompt=draw(st.none() | st.text(max_size=20)) if with_prompts else None,
            tenant=draw(st.none() | st.sampled_from(tenants)) if with_tenants else None,
            priority=draw(st.integers(-5, 5))))
    tr = Trace.from_requests(reqs, adapters=catalog, meta={"seed": 7, "transforms": ["x"]})
    if not with_ids:
        tr.ids = None
    if with_prefix and tr.prefix_flat is None:  # every list drawn empty
        tr.prefix_flat = np.zeros(0, np.int64)
        tr.prefix_offsets = np.zeros(n + 1, np.int64)
    if with_prompts and tr.prompts is None:
        tr.prompts = np.full(n, None, dtype=object)
    return tr


@pytest.mark.parametrize("ext", EXTS)
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(trace=traces())
def test_native_round_trip_is_exact(ext, trace, tmp_path):
    path = tmp_path / f"t.{ext}"
    save(trace, str(path))
    back = load(str(path))
    assert equal(trace, back)
    assert list(back) == list(trace)  # the Request view too
    assert back.adapters == trace.adapters  # catalog kept, also unused entries
    assert back.meta["seed"] == 7 and back.meta["transforms"] == ["x"]
    assert back.meta["format"] == f"native-{ext}"
    if ext == "jsonl":  # the fast whole-chunk path and the line-by-line path agree
        from twinbench.traces.fmt_native_jsonl import load_careful
        assert equal(load_careful(str(path), False), back)


@pytest.mark.parametrize("sample", ["azure_conv", "mooncake", "servegen"])
@pytest.mark.parametrize("ext", EXTS)
def test_real_slices_round_trip(sample, ext, tmp_path):
    from twinbench.traces import assign_adapters

    trace = load(bundled(sample), window=(0, 60)) if sample == "servegen" else load(bundled(sample))
    trace = assign_adapters(trace, "zipf:1.0", 5, seed=1)
    path = tmp_path / f"t.{ext}"
    save(trace, str(path))
    back = load(str(path))
    assert equal(trace, back)
    assert back.meta["derived_from"]["format"] == trace.meta["format"]
    assert back.meta.get("prefix_block_tokens") == trace.meta.get("prefix_block_tokens")


def test_hand_written_native_files_load(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens,adapter\n0,10,5,a\n1.5,20,6,\n")
    t = load(str(p))
    assert [r.adapter for r in t] == ["a", None] and t.adapters == [Adapter("a")]
    q = tmp_path / "mine.jsonl"
    q.write_text('{"arrival_s": 0, "prompt_tokens": 10, "output_tokens": 5, "adapter": "a"}\n')
    assert load(str(q))[0].adapter == "a"


def test_save_refuses_unknown_extension_and_multiline_names(tmp_path):
    t = Trace.from_requests([Request("1", 0.0, "x\ny", 5, 5)])
    with pytest.raises(TraceError, match="spans lines"):
        save(t, str(tmp_path / "a.csv"))
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(TraceError, match="extension"):
        save(t, str(tmp_path / "a.txt"))
    save(t, str(tmp_path / "a.npz"))  # binary: any name works
    assert load(str(tmp_path / "a.npz"))[0].adapter == "x\ny"


def test_unsorted_native_rows_are_sorted_stably(tmp_path):
    p = tmp_path / "u.csv"
    p.write_text("id,arrival_s,prompt_tokens,output_tokens\na,2,1,1\nb,1,1,1\nc,1,1,1\n")
    with pytest.warns(UserWarning, match="not sorted"):
        t = load(str(p))
    assert [r.id for r in t] == ["b", "c", "a"]
    with pytest.raises(TraceError, match="not sorted"):
        load(str(p), strict=True)
    q = tmp_path / "u.jsonl"
    q.write_text('{"twinbench_trace": 1}\n{"arrival_s": 2, "prompt_tokens": 1, '
                 '"output_tokens": 1}\n{"arrival_s": 1, "prompt_tokens": 1, "output_tokens": 1}\n')
    with pytest.raises(TraceError, match=r"u.jsonl:3: timestamps not sorted"):
        load(str(q), strict=True)


def test_corrupt_npz_is_a_clean_error(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(TraceError, match="bad.npz:1: not a readable .npz"):
        load(str(p))
    arrays = tmp_path / "foreign.npz"
    np.savez(str(arrays), x=np.arange(3))
    with pytest.raises(TraceError, match="missing array"):
        load(str(arrays))
