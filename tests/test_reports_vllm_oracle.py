"""THE oracle test: re-scoring vLLM's own per-request arrays reproduces every summary figure
vLLM `bench serve` wrote, exactly (==), including pooled ITL, goodput and the peak figures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from twinbench.reports.metrics import summarize
from twinbench.reports.vllm_io import read_vllm_result, to_vllm_result

ORACLES = Path(__file__).parent / "data" / "oracles"
# oracle_concurrency.json was run with --goodput ttft:500 tpot:100 (see SCHEMA.md §8)
SLOS = {"oracle_poisson.json": None, "oracle_concurrency.json": {"ttft": 500, "tpot": 100}}
NOT_SUMMARY = {"date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id",
               "num_prompts", "request_rate", "burstiness", "max_concurrency", "input_lens",
               "output_lens", "ttfts", "itls", "latencies", "start_times", "queue_times",
               "generated_texts", "errors", "rtfx"}


@pytest.mark.parametrize("name", sorted(SLOS))
def test_rescoring_reproduces_every_vllm_figure_exactly(name):
    path = ORACLES / name
    written = json.loads(path.read_text())
    s = summarize(read_vllm_result(str(path)), slos=SLOS[name], percentiles=(50, 90, 99))
    figures = {k: v for k, v in written.items() if k not in NOT_SUMMARY}
    assert len(figures) >= 33
    mismatches = {k: (v, s.metrics.get(k)) for k, v in figures.items() if s.metrics.get(k) != v}
    assert mismatches == {}
    assert s.timing == "vllm-arrays" and s.source == "vllm"


def test_poisson_oracle_has_multi_token_chunks_so_itl_differs_from_tpot():
    s = summarize(read_vllm_result(str(ORACLES / "oracle_poisson.json")))
    assert s["mean_itl_ms"] != s["mean_tpot_ms"]


def test_export_in_vllm_keys_round_trips(tmp_path):
    path = ORACLES / "oracle_concurrency.json"
    loaded = read_vllm_result(str(path))
    s = summarize(loaded, slos=SLOS["oracle_concurrency.json"], percentiles=(50, 90, 99))
    exported = to_vllm_result(s, loaded, percentiles=(50, 90, 99))
    out = tmp_path / "again.json"
    out.write_text(json.dumps(exported))
    again = summarize(read_vllm_result(str(out)), slos=SLOS["oracle_concurrency.json"],
                      percentiles=(50, 90, 99))
    written = json.loads(path.read_text())
    for k, v in written.items():
        if k in NOT_SUMMARY:
            continue
        assert exported[k] == v, k
        assert again.metrics[k] == v, k


def test_vllm_file_without_detailed_arrays_is_a_clear_error(tmp_path):
    from twinbench.reports.runfile import RunFileError
    d = json.loads((ORACLES / "oracle_poisson.json").read_text())
    for k in ("ttfts", "itls", "errors"):
        del d[k]
    p = tmp_path / "short.json"
    p.write_text(json.dumps(d))
    with pytest.raises(RunFileError, match="--save-detailed"):
        read_vllm_result(str(p))
