"""Run files: partial files load and say so; nothing is overwritten without force; the fast
columnar reader agrees with the record reader."""
from __future__ import annotations

import json

import numpy as np
import pytest

from twinbench.reports import RequestRecord, RunFileError, RunWriter, read_run
from twinbench.reports.fastread import read_run_table
from twinbench.reports.load import from_run, load_path
from twinbench.reports.metrics import summarize
from twinbench.reports.synthetic import queue_run


def write_run(path, records, **footer):
    with RunWriter(path, {"label": "t"}) as w:
        for r in records:
            w.emit(r)
        w.sample(1.0, {"vllm:num_requests_running": 3, "vllm:num_requests_waiting": 1})
        w.sample(2.0, {"vllm:num_requests_running": 4, "vllm:num_requests_waiting": 0})
    return path


def test_never_overwrites_without_force(tmp_path):
    p = tmp_path / "run.jsonl"
    write_run(p, [])
    with pytest.raises(RunFileError, match="--force"):
        RunWriter(p, {})
    RunWriter(p, {}, force=True).close()


def test_truncated_last_line_loads_as_partial(tmp_path):
    recs = queue_run(30, 3)
    p = tmp_path / "run.jsonl"
    with RunWriter(p, {"label": "cut"}) as w:
        for r in recs:
            w.emit(r)
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    # crash in the middle of record 21: header + 20 complete record lines survive
    cut = b"\n".join(lines[:21]) + b"\n" + lines[21][: len(lines[21]) // 2]
    p.write_bytes(cut)
    for loaded in (load_path(p), from_run(read_run(p))):
        assert loaded.partial and "incomplete" in loaded.partial_reason
        assert len(loaded.table) == 20
    s = summarize(load_path(p))
    assert s.partial and s.metrics["num_requests"] == 20


def test_missing_footer_is_partial_and_interrupted_says_why(tmp_path):
    p = tmp_path / "run.jsonl"
    w = RunWriter(p, {"label": "x"})
    w.emit(queue_run(1, 1)[0])
    w._f.close()  # a crash: no footer
    assert "no footer" in load_path(p).partial_reason
    q = tmp_path / "int.jsonl"
    w = RunWriter(q, {"label": "x"})
    w.close("interrupted", reason="KeyboardInterrupt")
    assert "interrupted" in load_path(q).partial_reason
    assert "KeyboardInterrupt" in load_path(q).partial_reason


def test_fast_reader_matches_record_reader(tmp_path):
    recs = queue_run(200, 5)
    recs[3].segments, recs[3].chunk_times = np.array([[10**9, 10**7, 5, 2]]), None
    recs[4].chunk_tokens = np.full(len(recs[4].chunk_times), 2, np.int32)
    recs[5].status, recs[5].chunk_times, recs[5].end_s = "error", None, None
    p = write_run(tmp_path / "run.jsonl", recs)
    fast = summarize(read_run_table(str(p)))
    slow = summarize(from_run(read_run(p)))
    assert fast.metrics == slow.metrics
    assert fast.series.server["vllm:num_requests_running"][1].tolist() == [3.0, 4.0]
    assert not load_path(p).partial


def test_not_a_run_file_is_one_clear_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text("hello\n")
    with pytest.raises(RunFileError, match="not a twinbench run file"):
        load_path(p)
    e = tmp_path / "empty.jsonl"
    e.write_text("")
    with pytest.raises(RunFileError, match="empty"):
        load_path(e)
    with pytest.raises(RunFileError, match="no such file"):
        load_path(tmp_path / "missing.jsonl")


def test_header_only_run_summarises_to_empty(tmp_path):
    p = tmp_path / "h.jsonl"
    RunWriter(p, {"label": "h"}).close()
    s = summarize(load_path(p))
    assert s.metrics["num_requests"] == 0 and not s.partial


def test_record_json_roundtrip_keeps_exact_chunks():
    r = queue_run(1, 9)[0]
    back = RequestRecord.from_json(json.loads(json.dumps(r.to_json())))
    assert np.array_equal(back.chunk_times, r.chunk_times)


def test_fast_reader_garbled_line_mid_batch_and_sparse_records(tmp_path):
    # the batch parser must fall back to line by line: stop at the garbled line (partial,
    # records before it kept), and take records that omit optional keys
    recs = queue_run(40, 6)
    p = write_run(tmp_path / "run.jsonl", recs)
    lines = p.read_bytes().split(b"\n")
    sparse = {"kind": "record", "id": 7, "arrival_s": 1, "prompt_tokens": 5,
              "requested_output_tokens": 2}
    lines[3] = json.dumps(sparse).encode()
    lines[30] = b"{oops" + lines[30]
    q = tmp_path / "garbled.jsonl"
    q.write_bytes(b"\n".join(lines))
    fast, slow = read_run_table(str(q)), from_run(read_run(q))
    assert fast.partial_reason == slow.partial_reason == "line 31 is not valid JSON"
    assert len(fast.table) == len(slow.table) == 29
    row = list(fast.table.ids).index("7")
    assert fast.table.status[row] == slow.table.status[row]
    assert summarize(fast).metrics == summarize(slow).metrics
