"""`twinbench trace inspect|convert|generate` and the shared trace flags (cli_args)."""
from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

from twinbench.cli.main import main
from twinbench.traces import bundled, load
from twinbench.traces.cli_args import add_trace_arguments, trace_from_args
from twinbench.traces.transforms import equal


def run_json(capsys, *argv) -> dict:
    assert main(["trace", "inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def bundled_rows(name: str) -> int:
    with open(bundled(name), newline="") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def test_inspect_defaults_to_the_bundled_azure_slice(capsys):
    s = run_json(capsys)
    assert s["requests"] == bundled_rows("azure_conv")
    assert s["trace"]["format"] == "azure"
    assert s["adapters"] == [{"name": None, "requests": s["requests"], "share": 1.0}]
    t = load(bundled("azure_conv"))
    gaps = np.diff(t.arrival_s)
    assert s["interarrival_cv"] == pytest.approx(gaps.std() / gaps.mean())
    assert s["prompt_tokens"]["p99"] == pytest.approx(np.percentile(t.prompt_tokens, 99))


def test_inspect_text_and_plot(tmp_path, capsys):
    png = tmp_path / "t.png"
    assert main(["trace", "inspect", bundled("mooncake"), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "requests     400" in out and "prefix blocks" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_flags_apply_in_order(capsys):
    s = run_json(capsys, bundled("azure_conv"), "--window", "100:300", "--rate", "2",
                 "--max-requests", "50", "--adapters", "zipf:1.0:4", "--adapter-ranks", "8,64",
                 "--max-model-len", "1024", "--seed", "3")
    assert s["requests"] == 50
    assert s["first_arrival_s"] >= 0
    assert sum(a["requests"] for a in s["adapters"]) == 50
    assert [a["rank"] for a in s["adapters"]] == [8, 64, 8, 64]
    assert s["prompt_tokens"]["max"] + 1 <= 1024
    names = [t.split("(")[0] for t in s["trace"]["transforms"]]
    assert names == ["window", "rescale_rate", "head", "assign_adapters", "clip_lengths"]


def test_helper_on_a_fresh_parser_returns_a_trace():
    p = argparse.ArgumentParser()
    add_trace_arguments(p)
    t = trace_from_args(p.parse_args(["--adapters", "round-robin:3", "--max-requests", "9"]))
    assert len(t) == 9 and [r.adapter for r in t][:4] == ["lora-0", "lora-1", "lora-2", "lora-0"]
    w = trace_from_args(p.parse_args([bundled("zipf_workload"), "--max-requests", "20"]))
    assert len(w) == 20 and len(w.adapters) == 64
    g = trace_from_args(p.parse_args(["--workload", bundled("paper_workload"), "--seed", "4"]))
    assert g.meta["seed"] == 4


def test_servegen_window_flag_samples_that_span(capsys):
    s = run_json(capsys, bundled("servegen"), "--window", "600:660", "--adapters", "tenant")
    assert 0 <= s["first_arrival_s"] and s["span_s"] < 60
    assert {a["name"] for a in s["adapters"]} <= {"client-14", "client-18", "client-27"}


@pytest.mark.parametrize("argv,flag", [(["--window", "5:1"], "--window"),
                                       (["--adapters", "zipf:x"], "--adapters"),
                                       (["--rate", "0"], "--rate"),
                                       (["--format", "parquet"], "--format"),
                                       (["--adapter-ranks", "a,b", "--adapters", "uniform:2"],
                                        "--adapter-ranks")])
def test_bad_flags_are_one_line_errors(argv, flag, capsys):
    assert main(["trace", "inspect", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]


def test_convert_round_trip_and_no_clobber(tmp_path, capsys):
    out = tmp_path / "conv.csv"
    assert main(["trace", "convert", bundled("azure_conv"), str(out), "--adapters",
                 "uniform:3"]) == 0
    again = load(str(out))
    p = argparse.ArgumentParser()
    add_trace_arguments(p)
    assert equal(again, trace_from_args(p.parse_args([bundled("azure_conv"), "--adapters",
                                                      "uniform:3"])))
    assert main(["trace", "convert", bundled("azure_conv"), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["trace", "convert", bundled("mooncake"), str(out), "--force"]) == 0
    assert len(load(str(out))) == 400


def test_generate_from_flags_and_from_a_workload(tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    assert main(["trace", "generate", "--rate", "5", "--requests", "300", "--adapters",
                 "zipf:1.0:4", "--prompt-len", "100", "--output-len", "uniform:1:10",
                 "--seed", "2", "-o", str(out)]) == 0
    t = load(str(out))
    assert len(t) == 300 and len(t.adapters) == 4
    assert set(t.prompt_tokens.tolist()) == {100} and t.output_tokens.max() <= 10
    assert t.meta["seed"] == 2
    streams = tmp_path / "s.npz"
    assert main(["trace", "generate", "--adapter-rates", "1.6,0.8,0.4", "--num-adapters", "6",
                 "--duration", "60", "-o", str(streams)]) == 0
    s = load(str(streams))
    assert [a.rank for a in s.adapters] == [8, 16, 32, 8, 16, 32]
    assert s.meta["workload"]["adapters"]["rates"] == [1.6, 0.8, 0.4]
    wl = tmp_path / "w.csv"
    assert main(["trace", "generate", "--workload", bundled("paper_workload"), "-o",
                 str(wl)]) == 0
    assert equal(load(str(wl)), load(bundled("paper_workload")))
    assert main(["trace", "generate", "--requests", "5", "-o", str(tmp_path / "z.csv")]) == 2
    assert "--rate" in capsys.readouterr().err
