"""Every malformed input in the corpus ends in one line naming file and line, exit code 2,
and no traceback, through the real CLI in a subprocess (`twinbench trace inspect FILE`)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data" / "traces"
CORPUS = DATA / "malformed"
EXPECTED = json.loads((DATA / "malformed_expected.json").read_text())


def test_corpus_is_complete():
    entries = sorted(p.name for p in CORPUS.iterdir())
    assert entries == sorted(EXPECTED)
    assert len(entries) >= 20


def inspect(name: str, cwd: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "twinbench.cli.main", "trace", "inspect", str(CORPUS / name)]
    if ".strict." in name:
        args.append("--strict")
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each corpus file through the CLI, a few subprocesses at a time (they are independent)."""
    cwd = tmp_path_factory.mktemp("corpus")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(sorted(EXPECTED), pool.map(lambda n: inspect(n, cwd), sorted(EXPECTED))))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_input_fails_cleanly(name, corpus_runs):
    line, reason = EXPECTED[name]
    out = corpus_runs[name]
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("twinbench: error:")]
    assert len(errors) == 1, out.stderr
    # file name (for ServeGen client folders: a file inside it), then the line number
    assert re.search(re.escape(name) + r"[^:\s]*:" + str(line) + ":", errors[0]), errors[0]
    assert reason in errors[0]
    assert out.stdout == ""


def test_unsorted_without_strict_is_sorted_with_a_warning(tmp_path):
    path = CORPUS / "azure_unsorted.strict.csv"
    out = subprocess.run([sys.executable, "-m", "twinbench.cli.main", "trace", "inspect",
                          str(path), "--json"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r"warning: .*azure_unsorted\.strict\.csv:4: timestamps not sorted",
                     out.stderr)
    stats = json.loads(out.stdout)
    assert stats["requests"] == 4
    assert stats["first_arrival_s"] == 0.0
