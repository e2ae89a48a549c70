"""`twinbench report` and `twinbench compare` end to end on run files written by RunWriter."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from twinbench.cli.main import main
from twinbench.reports.runfile import RunWriter
from twinbench.reports.synthetic import queue_run

ORACLE = Path(__file__).parent / "data" / "oracles" / "oracle_poisson.json"


def write(path, records, label):
    with RunWriter(path, {"label": label}) as w:
        for r in records:
            w.emit(r)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return {
        "base": write(d / "base.jsonl", queue_run(600, 7, service_seed=1), "base"),
        "noise": write(d / "noise.jsonl", queue_run(600, 7, service_seed=2), "noise"),
        "slow": write(d / "slow.jsonl", queue_run(600, 7, service_seed=3, slowdown=1.3), "slow"),
    }


def test_report_table_json_markdown_html(runs, tmp_path, capsys):
    assert main(["report", runs["base"], runs["slow"]]) == 0
    out = capsys.readouterr().out
    assert "Serving Benchmark Result" in out and "Mean TTFT (ms):" in out
    assert "Per adapter (base)" in out and "Offered vs served" in out
    assert main(["report", runs["base"], "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["completed"] == 600 and "mean_ttft_ms" in doc["definitions"]
    assert set(doc["per_adapter"]) == {"a", "b", "c"}
    assert main(["report", runs["base"], "--markdown"]) == 0
    assert "| Mean TTFT (ms) |" in capsys.readouterr().out
    html = tmp_path / "r.html"
    assert main(["report", runs["base"], runs["slow"], "-o", str(html), "--quiet"]) == 0
    text = html.read_text()
    assert text.count("data:image/png;base64,") >= 4 and "SMAPE" in text
    assert "<script" not in text and "http" not in text.split("<body>")[1][:2000]
    # never overwrite without --force (refused before any work is done)
    capsys.readouterr()
    assert main(["report", runs["base"], "-o", str(html)]) == 2
    assert "--force" in capsys.readouterr().err
    assert html.read_text() == text
    exported = tmp_path / "v.json"
    exported.write_text("keep")
    assert main(["report", runs["base"], "--export-vllm", str(exported)]) == 2
    assert main(["report", runs["base"], "--export-vllm", str(exported), "--force"]) == 0
    assert exported.read_text() != "keep"


def test_compare_gate_exit_codes(runs, capsys):
    spec = "p99_ttft_ms:+10%,mean_e2el_ms:+10%,output_throughput:-5%"
    assert main(["compare", runs["base"], runs["slow"], "--fail-on", spec, "--reps", "300"]) == 1
    out = capsys.readouterr().out
    assert "RESULT: FAIL" in out and "SMAPE" in out and "Starvation agreement" in out
    assert main(["compare", runs["base"], runs["noise"], "--fail-on", spec, "--reps", "300",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["gate"]["failed"] is False and len(doc["gate"]["results"]) == 3
    assert doc["metrics"][0]["smape_pct"] is not None
    assert main(["compare", runs["base"], runs["noise"], runs["slow"], "--noise-floor"]) == 0
    assert "Noise floor over 3 repeated runs" in capsys.readouterr().out


def test_vllm_result_and_partial_run_as_report_inputs(runs, tmp_path, capsys):
    assert main(["report", str(ORACLE), "--percentiles", "50,90,99"]) == 0
    out = capsys.readouterr().out
    assert "124.67" in out  # vLLM's own output_throughput, 124.669...
    cut = tmp_path / "cut.jsonl"
    raw = Path(runs["base"]).read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    assert main(["report", str(cut)]) == 0
    assert "PARTIAL RUN" in capsys.readouterr().out
    exported = tmp_path / "v.json"
    assert main(["report", runs["base"], "--export-vllm", str(exported)]) == 0
    v = json.loads(exported.read_text())
    assert v["completed"] == 600 and len(v["itls"]) == 600


@pytest.mark.parametrize("argv, needle", [
    (["report", "/nonexistent.jsonl"], "no such file"),
    (["report", "RUN", "--window", "5:1"], "--window"),
    (["report", "RUN", "--slo", "ttft=5"], "--slo"),
    (["compare", "RUN", "RUN", "--fail-on", "p99_ttft_ms:10"], "--fail-on"),
    (["compare", "RUN", "RUN", "--fail-on", "nonsense_metric:+5%"], "unknown metric"),
    (["compare", "RUN"], "at least two"),
])
def test_user_errors_are_one_line_exit_2(runs, argv, needle, capsys):
    argv = [runs["base"] if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1
