"""Each loader on the bundled slices of the real traces; expected values are recomputed here
from the raw files with the standard library, independently of the loaders."""
from __future__ import annotations

import csv
import datetime as dt
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from twinbench.traces import bundled, load
from twinbench.traces.errors import TraceWarning
from twinbench.traces.io import detect_format

DATA = Path(__file__).resolve().parent / "data" / "traces"


def azure_rows(path: str) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


@pytest.mark.parametrize("name", ["azure_conv", "azure_code"])
def test_azure_slice_matches_raw_rows(name):
    path = bundled(name)
    rows = azure_rows(path)
    trace = load(path)
    assert detect_format(path) == "azure"
    assert len(trace) == len(rows)
    # 7 fractional digits: parse the first 6 with the stdlib, add the 7th by hand
    def seconds(s: str) -> float:
        head, frac = s.split(".")
        return dt.datetime.fromisoformat(head).timestamp() + int(frac) / 10 ** len(frac)
    t = [seconds(r[0]) for r in rows]
    assert trace.arrival_s[0] == 0.0
    assert trace.duration_s == pytest.approx(max(t) - min(t), abs=1e-6)
    assert trace.prompt_tokens.tolist() == [int(r[1]) for r in rows]
    assert trace.output_tokens.tolist() == [int(r[2]) for r in rows]
    assert (trace.adapter_idx == -1).all()
    assert trace.meta["format"] == "azure" and len(trace.meta["sha256"]) == 64


def test_azure_crlf_and_no_final_newline_are_the_bundled_layout():
    raw = Path(bundled("azure_conv")).read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")


def test_mooncake_hash_ids_become_prefix_blocks():
    path = bundled("mooncake")
    objs = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    trace = load(path)
    assert trace.meta["format"] == "mooncake"
    assert trace.meta["prefix_block_tokens"] == 512
    assert len(trace) == len(objs)
    assert trace.arrival_s.tolist() == [o["timestamp"] / 1000 for o in objs]
    assert trace.prompt_tokens.tolist() == [o["input_length"] for o in objs]
    for i in (0, 1, len(objs) - 1):
        assert trace.prefix_blocks(i) == tuple(objs[i]["hash_ids"])
        assert trace[i].prefix_blocks == tuple(objs[i]["hash_ids"])


def test_sharegpt_table_gets_seeded_poisson_arrivals():
    path = bundled("sharegpt")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    a = load(path, seed=3)
    b = load(path, seed=3)
    c = load(path, seed=4)
    assert a.meta["format"] == "lengths"
    assert a.prompt_tokens.tolist() == [int(r["num_prefill_tokens"]) for r in rows]
    assert a.output_tokens.tolist() == [int(r["num_decode_tokens"]) for r in rows]
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    gaps = np.diff(a.arrival_s)
    assert gaps.mean() == pytest.approx(1.0, rel=0.1)  # default 1 req/s, n = 2000
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)
    fast = load(path, arrival={"process": "constant", "rate": 4.0})
    assert np.allclose(np.diff(fast.arrival_s), 0.25)


def test_servegen_clients_become_tenants_with_lengths_from_their_windows():
    path = bundled("servegen")
    trace = load(path, window=(0, 600), seed=1)
    assert trace.meta["format"] == "servegen"
    assert trace.tenants == ["client-14", "client-18", "client-27"]
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.arrival_s.min() >= 0 and trace.arrival_s.max() < 600
    for k, client in enumerate(("14", "18", "27")):
        with open(Path(path) / f"chunk-{client}-trace.csv") as f:
            first = next(csv.reader(f))
        rate = float(first[1])
        n = int((trace.tenant_idx == k).sum())
        expected = rate * 600
        # a renewal count over 600 s; its spread is large for the bursty Weibull windows
        assert abs(n - expected) < 0.25 * expected + 50, (client, n, expected)
        ds = json.loads((Path(path) / f"chunk-{client}-dataset.json").read_text())
        import ast
        support = set(ast.literal_eval(ds["0"]["input_tokens"]))
        got = set(trace.prompt_tokens[trace.tenant_idx == k].tolist())
        assert got <= support
    again = load(path, window=(0, 600), seed=1)
    assert np.array_equal(again.arrival_s, trace.arrival_s)
    assert np.array_equal(again.prompt_tokens, trace.prompt_tokens)


def test_servegen_window_uses_the_containing_six_hour_length_window():
    path = bundled("servegen")
    trace = load(str(Path(path) / "chunk-18-trace.csv"), window=(21600 + 1200, 21600 + 1800))
    assert trace.tenants == ["client-18"]
    import ast
    ds = json.loads((Path(path) / "chunk-18-dataset.json").read_text())
    support = set(ast.literal_eval(ds["21600"]["output_tokens"]))
    assert set(trace.output_tokens.tolist()) <= support


def test_servegen_client_without_dataset_takes_given_lengths(tmp_path):
    src = Path(bundled("servegen")) / "chunk-27-trace.csv"
    (tmp_path / "chunk-27-trace.csv").write_bytes(src.read_bytes())
    trace = load(str(tmp_path / "chunk-27-trace.csv"), window=(0, 60),
                 lengths={"prompt": 100, "output": 7})
    assert set(trace.prompt_tokens.tolist()) == {100}
    assert set(trace.output_tokens.tolist()) == {7}


def test_burstgpt_failed_rows_dropped_or_kept_and_models_are_tenants():
    path = str(DATA / "burstgpt_sample.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ok = [r for r in rows if int(r["Response tokens"]) > 0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = load(path)
    assert any(issubclass(w.category, TraceWarning) and "dropped 2 failed" in str(w.message)
               for w in caught)
    assert trace.meta["format"] == "burstgpt" and trace.meta["failed_rows"] == 2
    assert len(trace) == len(ok)
    assert trace.arrival_s.tolist() == [float(r["Timestamp"]) - 5.0 for r in ok]
    assert [trace[i].tenant for i in range(len(trace))] == [r["Model"] for r in ok]
    kept = load(path, failed="keep")
    assert len(kept) == len(rows)
    assert kept.output_tokens.min() == 1


def test_format_override_beats_detection(tmp_path):
    # a length table whose header looks like nothing known still loads with --format lengths
    p = tmp_path / "t.csv"
    p.write_text("prompt_len,output_len\n10,5\n20,6\n")
    assert detect_format(str(p)) == "lengths"
    q = tmp_path / "weird.txt"
    q.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2}\n')
    assert len(load(str(q), format="mooncake")) == 1
    from twinbench.traces.core import TraceError
    with pytest.raises(TraceError, match="unknown format"):
        load(str(q), format="nope")


def test_workload_file_loads_as_a_generated_trace():
    t = load(bundled("paper_workload"))
    assert t.meta["format"] == "workload" and len(t.adapters) == 12


def test_azure_2024_schema_with_utc_offsets(tmp_path):
    p = tmp_path / "AzureLLMInferenceTrace_code_1week.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2024-05-10 00:00:00.0099300+00:00,4808,10\n"
                 "2024-05-10 02:00:01.5000000+02:00,3180,8\n"
                 "2024-05-10 00:00:02.0099300Z,110,27\n")
    t = load(str(p))
    assert t.meta["format"] == "azure"
    # the second stamp is 00:00:01.5 UTC: it sorts before the third
    assert t.arrival_s.tolist() == pytest.approx([0.0, 1.49007, 2.0])
