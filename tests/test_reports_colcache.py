"""The binary column cache beside large run files: a cached read gives the same run as a
parse; a stale, cut or foreign cache is never used; no cache where none can be written."""
from __future__ import annotations

import glob
import json
import mmap
import os
import struct

import numpy as np
import pytest

from twinbench.reports import RunWriter, colcache
from twinbench.reports.fastread import read_run_table
from twinbench.reports.load import load_path
from twinbench.reports.metrics import summarize
from twinbench.reports.synthetic import queue_run


@pytest.fixture
def small_min(monkeypatch):
    monkeypatch.setattr(colcache, "MIN_BYTES", 0)  # cache even the small files of a test


def varied_run(path, footer=True):
    """Records of every kind the table distinguishes: base model, errors with text, a warm-up,
    twin segments, multi-token chunks, never sent."""
    recs = queue_run(300, 11)
    recs[0].adapter = None
    recs[1].status, recs[1].error, recs[1].chunk_times, recs[1].end_s = \
        "error", "HTTP 500: boom", None, None
    recs[2].warmup = True
    recs[3].segments, recs[3].chunk_times = np.array([[10**9, 10**7, 5, 2]]), None
    recs[4].chunk_tokens = np.full(len(recs[4].chunk_times), 2, np.int32)
    recs[5].status, recs[5].sent_s, recs[5].first_token_s, recs[5].end_s = \
        "cancelled", None, None, None
    recs[5].chunk_times = None
    recs[6].id = "é-unicode id"
    w = RunWriter(path, {"label": "cached"})
    for r in recs:
        w.emit(r)
    w.sample(1.0, {"vllm:num_requests_running": 3})
    if footer:
        w.close()
    else:
        w._f.close()   # a crash: no footer
    return path


def same_run(a, b):
    sa, sb = summarize(a), summarize(b)
    assert sa.metrics == sb.metrics
    assert {k: v.metrics for k, v in sa.per_adapter.items()} == \
        {k: v.metrics for k, v in sb.per_adapter.items()}
    for name in ("label", "source", "header", "footer", "partial_reason", "samples", "sketches"):
        assert getattr(a, name) == getattr(b, name), name
    ta, tb = a.table, b.table
    assert list(ta.ids) == list(tb.ids) and ta.adapters == tb.adapters
    assert ta.errors == tb.errors and ta.timing == tb.timing
    for name in colcache._ARRAYS:
        x, y = getattr(ta, name), getattr(tb, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), \
                name


@pytest.mark.parametrize("kind", ["varied", "all ok", "empty"])
def test_second_read_comes_from_the_cache_and_equals_the_parse(tmp_path, small_min, kind):
    p = tmp_path / "run.jsonl"
    if kind == "varied":
        varied_run(p)
    else:
        with RunWriter(p, {"label": kind}) as w:
            for r in (queue_run(50, 2) if kind == "all ok" else []):
                w.emit(r)
    parsed = read_run_table(str(p))
    first = load_path(p)                          # parses, then writes the cache
    cache = tmp_path / ".run.jsonl.cols"
    assert cache.exists()
    assert not from_cache(first)
    second = load_path(p)
    assert from_cache(second)
    same_run(parsed, second)
    same_run(first, second)
    # read-only views of the mapped file: a write raises and cannot reach the file
    before = cache.read_bytes()
    with pytest.raises(ValueError, match="read-only"):
        second.table.arrival_s[:1] = -1.0
    assert cache.read_bytes() == before
    # a shell-style glob over the folder finds the run, not its hidden cache
    assert glob.glob(str(tmp_path / "*")) == [str(p)]


def from_cache(loaded) -> bool:
    base = loaded.table.chunk_start.base
    return isinstance(getattr(base, "obj", None), mmap.mmap)


def test_partial_run_keeps_its_reason_through_the_cache(tmp_path, small_min):
    p = varied_run(tmp_path / "crashed.jsonl", footer=False)
    load_path(p)
    cached = colcache.load_cached(str(p))
    assert cached is not None and "no footer" in cached.partial_reason
    same_run(read_run_table(str(p)), cached)


def test_a_changed_run_file_makes_the_cache_stale(tmp_path, small_min):
    p = varied_run(tmp_path / "run.jsonl", footer=False)
    load_path(p)
    assert colcache.load_cached(str(p)) is not None
    with open(p, "a") as f:   # the run went on: one more line
        f.write('{"kind":"footer","status":"complete","records":300}\n')
    assert colcache.load_cached(str(p)) is None
    fresh = load_path(p)
    assert fresh.partial_reason is None
    assert colcache.load_cached(str(p)).partial_reason is None   # rewritten
    # same size, same time stamp, different bytes at the end: the probe hash catches it
    st = os.stat(p)
    raw = bytearray(p.read_bytes())
    raw[-20:-2] = b"x" * 18
    p.write_bytes(bytes(raw))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert colcache.load_cached(str(p)) is None


def test_the_cache_is_tied_to_the_code_that_built_the_table(tmp_path, small_min, monkeypatch):
    p = varied_run(tmp_path / "run.jsonl")
    load_path(p)
    assert colcache.load_cached(str(p)) is not None
    monkeypatch.setattr(colcache, "_code_hash", lambda: "a later reader")
    assert colcache.load_cached(str(p)) is None
    # without its own source to hash, nothing is cached or read from a cache
    monkeypatch.setattr(colcache, "_code_hash", lambda: colcache.UNKNOWN_CODE)
    q = varied_run(tmp_path / "other.jsonl")
    assert not from_cache(load_path(q)) and not from_cache(load_path(q))
    assert not (tmp_path / ".other.jsonl.cols").exists()


@pytest.mark.parametrize("damage", ["cut", "magic", "format", "header length", "count",
                                    "not an object", "foreign column"])
def test_a_damaged_cache_is_ignored_and_replaced(tmp_path, small_min, damage):
    p = varied_run(tmp_path / "run.jsonl")
    reference = load_path(p)
    cache = tmp_path / ".run.jsonl.cols"
    raw = cache.read_bytes()
    if damage == "cut":
        raw = raw[: len(raw) - 100]
    elif damage == "magic":
        raw = b"X" + raw[1:]
    elif damage == "format":
        raw = raw.replace(colcache.FORMAT.encode(), b"twinbench-cols/0", 1)
    elif damage == "header length":
        k = len(colcache.MAGIC)
        raw = raw[:k] + struct.pack("<Q", 2**64 - 1) + raw[k + 8:]
    else:
        k = len(colcache.MAGIC)
        (hlen,) = struct.unpack("<Q", raw[k:k + 8])
        meta = json.loads(raw[k + 8:k + 8 + hlen])
        if damage == "count":    # a column said to be longer than the table
            meta["arrays"]["arrival_s"][1] += 1
            meta["arrays"]["arrival_s"][3] += 8
        elif damage == "foreign column":   # a column this code does not know, renamed
            meta["arrays"]["xnd_s"] = meta["arrays"].pop("end_s")
        head = json.dumps(meta).encode() if damage != "not an object" else b'"x"'
        head += b" " * (hlen - len(head))   # same length: the data stays where it was
        assert len(head) == hlen
        raw = raw[:k + 8] + head + raw[k + 8 + hlen:]
    cache.write_bytes(raw)
    assert colcache.load_cached(str(p)) is None
    same_run(reference, load_path(p))
    assert colcache.load_cached(str(p)) is not None


def test_no_cache_for_a_run_file_that_grew_during_the_read(tmp_path, small_min):
    p = varied_run(tmp_path / "run.jsonl")
    identity = colcache.source_identity(str(p))
    loaded = read_run_table(str(p))
    with open(p, "a") as f:
        f.write('{"kind":"sample","t":9.0,"metrics":{}}\n')
    assert colcache.save_cache(str(p), loaded, identity) is None
    assert colcache.save_cache(str(p), loaded, colcache.source_identity(str(p))) is not None


def test_an_interrupted_cache_write_leaves_nothing(tmp_path, small_min, monkeypatch):
    p = varied_run(tmp_path / "run.jsonl")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(colcache.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_path(p)
    assert sorted(os.listdir(tmp_path)) == ["run.jsonl"]


def test_small_files_and_cache_off_leave_no_cache(tmp_path, monkeypatch):
    p = varied_run(tmp_path / "run.jsonl")
    load_path(p)                                    # far below the default MIN_BYTES
    monkeypatch.setattr(colcache, "MIN_BYTES", 0)
    load_path(p, cache=False)
    assert not (tmp_path / ".run.jsonl.cols").exists()


def test_a_cache_that_cannot_be_written_costs_nothing(tmp_path, small_min):
    # something else already holds the cache's name (a folder): the write fails at the
    # rename, the report goes on, and no temporary file is left behind
    p = varied_run(tmp_path / "run.jsonl")
    (tmp_path / ".run.jsonl.cols").mkdir()
    same_run(read_run_table(str(p)), load_path(p))
    assert sorted(os.listdir(tmp_path)) == [".run.jsonl.cols", "run.jsonl"]
    assert colcache.load_cached(str(p)) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_still_reports(tmp_path, small_min):
    folder = tmp_path / "ro"
    folder.mkdir()
    p = varied_run(folder / "run.jsonl")
    folder.chmod(0o555)
    try:
        same_run(read_run_table(str(p)), load_path(p))
        assert sorted(os.listdir(folder)) == ["run.jsonl"]
    finally:
        folder.chmod(0o755)


def test_commands_leave_use_or_skip_the_cache(tmp_path, small_min, monkeypatch, capsys):
    from twinbench.cli.main import main

    p = varied_run(tmp_path / "run.jsonl")
    cache = tmp_path / ".run.jsonl.cols"
    assert main(["report", str(p), "--no-cache", "--json", "--quiet"]) == 0
    assert not cache.exists()
    uncached = capsys.readouterr().out
    assert main(["report", str(p), "--json", "--quiet"]) == 0
    parsed = capsys.readouterr().out
    assert cache.exists() and parsed == uncached
    assert main(["report", str(p), "--json", "--quiet"]) == 0   # from the cache
    assert capsys.readouterr().out == parsed
    q = varied_run(tmp_path / "other.jsonl")
    assert main(["compare", str(p), str(q), "--no-cache", "--json", "--quiet"]) == 0
    assert not (tmp_path / ".other.jsonl.cols").exists()
    # a replay leaves the cache beside its -o file, none beside its own temporary file
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:15:{10 + i:02d}.000,{100 + 7 * i},{5 + i}\n" for i in range(20)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    assert main(["replay", str(trace), "--quiet"]) == 0
    assert os.listdir(scratch) == []
    assert main(["replay", str(trace), "-o", str(tmp_path / "r.jsonl"), "--quiet"]) == 0
    assert (tmp_path / ".r.jsonl.cols").exists()
