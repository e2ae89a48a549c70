"""Golden tests: hand-computed records -> exact metrics (DESIGN §3), and the edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from twinbench.reports import RequestRecord
from twinbench.reports.metrics import summarize
from twinbench.reports.sketch import QuantileSketch


def rec(rid, adapter, arrival, sent, chunks, prompt=10, requested=None, output=None,
        status="ok", tokens=None, warmup=False, queue=0.0):
    chunks = None if chunks is None else np.array(chunks, dtype=np.float64)
    return RequestRecord(
        id=rid, adapter=adapter, arrival_s=arrival, prompt_tokens=prompt,
        requested_output_tokens=requested if requested is not None else (output or 1),
        status=status, sent_s=sent, client_queue_s=queue,
        first_token_s=None if chunks is None else float(chunks[0]),
        end_s=None if chunks is None else float(chunks[-1]), output_tokens=output,
        chunk_times=chunks, chunk_tokens=None if tokens is None else np.array(tokens, np.int32),
        warmup=warmup)


def golden_records():
    """Times are dyadic so that most figures are exact in binary floating point.

    r0 (a): sent 0, chunks 0.5 0.75 1.0, 3 tokens   -> TTFT .5, E2EL 1, TPOT .25, ITL .25 .25
    r1 (b): arrives 1, sent 1.25 (late client), one chunk at 1.5 carrying 4 tokens
                                                    -> TTFT .25, E2EL .25, TPOT 0, no ITL
    r2 (a): sent 2, one chunk at 2.75, 1 token      -> TTFT .75, E2EL .75, no TPOT
    r3 (b): arrives 3, sent, fails; 5 tokens asked  -> failed, never started
    w  (a): warm-up, ends at 5.0 (must not stretch the duration)
    """
    return [
        rec("w", "a", 0.0, 0.0, [0.1, 5.0], output=2, warmup=True),
        rec("r0", "a", 0.0, 0.0, [0.5, 0.75, 1.0], output=3),
        rec("r1", "b", 1.0, 1.25, [1.5], output=4, tokens=[4]),
        rec("r2", "a", 2.0, 2.0, [2.75], output=1),
        rec("r3", "b", 3.0, 3.0, None, requested=5, status="error"),
    ]


def test_golden_run_metrics():
    s = summarize(golden_records(), slos={"ttft": 500, "tpot": 200})
    m = s.metrics
    assert m["duration"] == 2.75
    assert (m["completed"], m["failed"], m["error_requests"]) == (3, 1, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (30, 8)
    assert m["request_throughput"] == 3 / 2.75
    assert m["output_throughput"] == 8 / 2.75
    assert m["total_token_throughput"] == 38 / 2.75
    # goodput: only r1 meets TTFT <= 500 ms and TPOT <= 200 ms (r0 has TTFT == 500: inclusive,
    # but TPOT 250 > 200)
    assert m["request_goodput"] == 1 / 2.75
    assert (m["mean_ttft_ms"], m["median_ttft_ms"]) == (500.0, 500.0)
    assert m["p90_ttft_ms"] == pytest.approx(700.0, rel=1e-12)
    assert m["p99_ttft_ms"] == pytest.approx(745.0, rel=1e-12)
    assert m["std_ttft_ms"] == pytest.approx(1000 * math.sqrt(0.125 / 3), rel=1e-12)
    assert (m["mean_itl_ms"], m["median_itl_ms"], m["std_itl_ms"], m["p99_itl_ms"]) == \
        (250.0, 250.0, 0.0, 250.0)
    # TPOT: r0 (1.0-0.5)/2 = 0.25, r1 (0.25-0.25)/3 = 0; the one-token r2 has none
    assert (m["mean_tpot_ms"], m["median_tpot_ms"]) == (125.0, 125.0)
    assert m["p90_tpot_ms"] == pytest.approx(225.0, rel=1e-12)
    assert m["mean_e2el_ms"] == pytest.approx(2000 / 3, rel=1e-12)
    assert m["median_e2el_ms"] == 750.0
    # TTFT from arrival: r1 waited 0.25 s in a late client -> 0.5
    assert m["median_ttft_from_arrival_ms"] == 500.0
    assert m["mean_ttft_from_arrival_ms"] == pytest.approx(1750 / 3, rel=1e-12)
    # dispatch lag over every sent request: 0, 0.25, 0, 0
    assert (m["mean_dispatch_lag_ms"], m["median_dispatch_lag_ms"]) == (62.5, 0.0)
    # vLLM peaks: chunk buckets [2, 2, 1, 0] from t0 = 0; active per second [1, 2, 1, 0]
    assert m["max_output_tokens_per_s"] == 2.0
    assert m["max_concurrent_requests"] == 2
    assert (m["offered_requests"], m["served_requests"]) == (4, 3)
    assert (m["offered_tokens"], m["served_tokens"]) == (53, 38)
    assert (m["offered_output_tokens"], m["served_output_tokens"]) == (13, 8)
    assert m["served_token_ratio"] == 38 / 53
    assert m["never_started_requests"] == 1
    assert s.notes == ["1 warm-up requests excluded"]
    assert s.timing == "exact"
    for key in ("mean_ttft_ms", "p99_itl_ms", "output_throughput", "max_concurrent_requests",
                "served_token_ratio", "mean_dispatch_lag_ms"):
        assert key in s.definitions and s.definitions[key]


def test_golden_per_adapter_and_starvation():
    s = summarize(golden_records(), starvation_threshold=0.9)
    a, b = s.per_adapter["a"].metrics, s.per_adapter["b"].metrics
    assert (a["completed"], a["failed"], b["completed"], b["failed"]) == (2, 0, 1, 1)
    assert a["mean_ttft_ms"] == 625.0
    assert a["mean_tpot_ms"] == 250.0      # r2 has one token: no TPOT
    assert a["mean_itl_ms"] == 250.0
    assert b["mean_itl_ms"] is None        # no request of b had two chunks
    assert b["mean_tpot_ms"] == 0.0
    assert a["output_throughput"] == 4 / 2.75
    assert (a["offered_tokens"], a["served_tokens"]) == (24, 24)
    assert (b["offered_tokens"], b["served_tokens"]) == (29, 14)
    st = s.starvation
    assert st.run_starving and st.served_token_ratio == 38 / 53
    assert st.starving_adapters == ["b"]
    reasons = " ".join(st.adapters["b"].reasons)
    assert "0.483 < 0.9" in reasons and "1 of 2 requests never started" in reasons
    assert not st.adapters["a"].starving
    # a lower threshold: b only starves for its never-started request
    s2 = summarize(golden_records(), starvation_threshold=0.4)
    assert not s2.starvation.run_starving
    assert s2.starvation.adapters["b"].reasons == ["1 of 2 requests never started at all"]


def test_window_semantics():
    s = summarize(golden_records(), window=(1.0, 3.0))
    m = s.metrics
    assert s.window == (1.0, 3.0)
    assert m["duration"] == 2.0
    assert (m["num_requests"], m["completed"]) == (2, 2)          # r1, r2 arrive in [1, 3)
    assert m["request_throughput"] == 3 / 2.0                     # r0, r1, r2 end in it
    assert m["output_throughput"] == 6 / 2.0                      # chunks at 1.0, 1.5(x4), 2.75
    assert m["total_token_throughput"] == (20 + 6) / 2.0          # prompts first served in it
    assert m["mean_ttft_ms"] == 500.0
    assert (m["offered_tokens"], m["served_tokens"]) == (25, 25)


def test_segments_equal_exact_arrays():
    exact = golden_records()
    seg = golden_records()
    r0 = seg[1]
    r0.chunk_times = None
    r0.segments = np.array([[500_000_000, 250_000_000, 3, 1]], dtype=np.int64)
    r1 = seg[2]
    r1.chunk_times, r1.chunk_tokens = None, None
    r1.segments = np.array([[1_500_000_000, 0, 1, 4]], dtype=np.int64)
    a, b = summarize(exact), summarize(seg)
    assert b.timing == "exact+segments"
    assert a.metrics == b.metrics
    only_seg = [r for r in seg if r.chunk_times is None]
    assert summarize(only_seg).timing == "segments"


def test_output_tokens_from_chunks_when_no_usage():
    r = rec("x", None, 0.0, 0.0, [0.5, 1.0], output=None, tokens=[2, 3], requested=9)
    s = summarize([r])
    assert s.metrics["total_output_tokens"] == 5
    assert s.metrics["mean_tpot_ms"] == 500 / 4
    assert list(s.per_adapter) == ["(base)"]


def test_empty_run_gives_na_not_errors():
    s = summarize([])
    m = s.metrics
    assert m["completed"] == 0 and m["duration"] is None
    assert m["request_throughput"] is None and m["mean_ttft_ms"] is None
    assert m["max_output_tokens_per_s"] is None and m["served_token_ratio"] is None
    assert s.per_adapter == {}
    from twinbench.reports.vllm_io import to_vllm_result
    v = to_vllm_result(s)
    assert v["mean_ttft_ms"] == 0.0 and v["completed"] == 0 and v["request_throughput"] == 0


def test_all_failed_run():
    rs = [rec(f"r{i}", "a", float(i), float(i), None, status="timeout") for i in range(3)]
    m = summarize(rs).metrics
    assert (m["completed"], m["failed"], m["timeout_requests"]) == (0, 3, 3)
    assert m["mean_e2el_ms"] is None and m["served_tokens"] == 0


def test_sketch_mode_uses_footer_sketches():
    from twinbench.reports.load import LoadedRun
    from twinbench.reports.table import table_from_records

    rs = golden_records()[1:4]
    gaps = np.array([0.25, 0.25])
    for r in rs:
        r.chunk_times = r.chunk_tokens = None
    sk = QuantileSketch().add(gaps)
    loaded = LoadedRun(label="sk", table=table_from_records(rs, sketch_mode=True),
                       sketches={"*": {"itl": sk.to_json()}, "a": {"itl": sk.to_json()}})
    s = summarize(loaded)
    assert s.timing == "sketch"
    assert s.metrics["mean_itl_ms"] == pytest.approx(250.0, rel=1e-12)
    assert s.metrics["p99_itl_ms"] == pytest.approx(250.0, rel=0.005)
    assert "sketch" in s.definitions["p99_itl_ms"]
    assert s.metrics["mean_ttft_ms"] == 500.0  # still exact from the record fields
    assert s.per_adapter["a"].metrics["mean_itl_ms"] == pytest.approx(250.0, rel=1e-12)
    assert any("sketch" in n for n in s.notes)


def test_bad_slo_is_a_user_error():
    from twinbench.traces.errors import TwinbenchError
    with pytest.raises(TwinbenchError):
        summarize(golden_records(), slos={"latency": 5})


def test_time_series_by_hand():
    from twinbench.reports.table import table_from_records
    from twinbench.reports.timeseries import build_series
    rs = golden_records()[1:]
    ts = build_series(table_from_records(rs), bucket_s=1.0, end_s=2.75)
    assert ts.t.tolist() == [0.0, 1.0, 2.0]
    # chunk tokens per 1 s bucket: [0.5, 0.75] -> 2; [1.0, 1.5 (x4)] -> 5; [2.75] -> 1 (the
    # series spans to the last arrival, r3 at 3.0, so the last bucket is whole)
    assert ts.output_tokens_per_s.tolist() == [2.0, 5.0, 1.0]
    short = build_series(table_from_records(rs[:3]), bucket_s=1.0, end_s=2.75)
    assert short.output_tokens_per_s.tolist() == [2.0, 5.0, 1 / 0.75]  # ends at 2.75
    # at midpoints 0.5, 1.5, 2.5: running = first token seen and not ended
    assert ts.running.tolist() == [1.0, 0.0, 0.0]      # r0 at 0.5; r1 ends at 1.5
    # queued at the server = sent, no token yet, [sent, first): r1 [1.25, 1.5) excludes 1.5;
    # r2 [2.0, 2.75) holds 2.5
    assert ts.queued_server.tolist() == [0.0, 0.0, 1.0]
    assert ts.queued_client.tolist() == [0.0, 0.0, 0.0]
    assert ts.dispatch_lag_ms[1] == 250.0 and ts.dispatch_lag_ms[0] == 0.0


def test_open_window_runs_to_the_last_completion():
    s = summarize(golden_records(), window=(1.0, None))
    assert s.metrics["duration"] == 1.75 and s.metrics["num_requests"] == 3


def test_sketches_from_the_backend_info_line(tmp_path):
    from twinbench.reports.load import load_path
    from twinbench.reports.runfile import RunWriter
    rs = golden_records()[1:4]
    for r in rs:
        r.chunk_times = r.chunk_tokens = None
    sk = QuantileSketch().add(np.array([0.25, 0.25])).to_json()
    p = tmp_path / "sk.jsonl"
    with RunWriter(p, {"label": "sk"}) as w:
        for r in rs:
            w.emit(r)
        w.info({"backend": "twin", "extra": {"sketches": {"a": {"itl": sk}}}})
    s = summarize(load_path(p))
    assert s.timing == "sketch"
    assert s.metrics["mean_itl_ms"] == pytest.approx(250.0, rel=1e-12)


def test_pooled_gaps_skip_request_boundaries_and_empty_rows():
    # blocks of 3 chunks force every straddling difference onto a block edge somewhere
    import twinbench.reports.metrics as metrics_mod
    from twinbench.reports.table import table_from_records

    rng = np.random.default_rng(8)
    recs = []
    for i in range(60):
        k = int(rng.integers(0, 5))
        times = np.sort(rng.random(k)) + i if k else None
        recs.append(rec(f"r{i}", "ab"[i % 2], float(i), float(i), times,
                        output=max(k, 1), status="ok" if k else "error"))
    t = table_from_records(recs)
    expected = np.concatenate([np.diff(t.chunk_t[t.chunk_start[i]:t.chunk_start[i + 1]])
                               for i in range(len(t))])
    for block in (1, 2, 3, 1 << 20):
        old = metrics_mod.GAP_BLOCK
        metrics_mod.GAP_BLOCK = block
        try:
            got = metrics_mod.pooled_gaps(t)
        finally:
            metrics_mod.GAP_BLOCK = old
        assert np.array_equal(got, expected) and np.array_equal(got, t.gaps())


def test_run_itl_mean_is_numpys_in_request_order_with_many_adapters():
    # adapters partition their regions of the pooled gaps in place; the run's mean and std must
    # still be np.mean / np.std of the gaps in request order (pairwise sums depend on order)
    from twinbench.reports.synthetic import queue_run
    from twinbench.reports.table import table_from_records

    for seed in (0, 1, 2):  # seed 1: the mean of the reordered gaps differs in the last bit
        recs = queue_run(3000, seed, adapters=("a", "b", "c", "d", "e"))
        gaps = table_from_records(recs).gaps().copy()
        m = summarize(recs, time_series=False).metrics
        assert m["mean_itl_ms"] == float(np.mean(gaps) * 1000)
        assert m["std_itl_ms"] == float(np.std(gaps) * 1000)
        assert m["p99_itl_ms"] == float(np.percentile(gaps, 99) * 1000)
        assert m["median_itl_ms"] == float(np.median(gaps) * 1000)
