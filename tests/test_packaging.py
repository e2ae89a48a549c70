"""The package installs as one `twinbench` namespace and never as generic top-level modules."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from twinbench.twin import NATIVE_MODULES, engine_build

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ("traces", "reports", "twin", "backends", "replay", "advisor", "cli")


@pytest.mark.parametrize("name", GENERIC)
def test_generic_names_are_not_importable_from_outside(tmp_path, name):
    out = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "ModuleNotFoundError" in out.stderr


def test_namespace_subpackages_import_from_outside(tmp_path):
    code = ("import twinbench.traces, twinbench.reports, twinbench.twin, twinbench.backends, "
            "twinbench.replay, twinbench.advisor, twinbench.cli.main; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_console_script_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "twinbench.cli.main", "--help"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0
    assert "COMMAND" in out.stdout


def test_wheel_holds_only_the_twinbench_namespace(tmp_path):
    """A non-editable build (what `pip install .` installs) maps every folder under twinbench/."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("twinbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert all(t == "twinbench" or t.startswith("twinbench-") for t in top), top
    assert not any(n.startswith("twinbench/__init__") for n in names)  # PEP 420: no __init__
    for sub in GENERIC:
        assert f"twinbench/{sub}/__init__.py" in names
    # package data that later parts rely on travels with the wheel
    assert "twinbench/backends/requirements-vllm-cpu.lock.txt" in names
    assert any(n.startswith("twinbench/traces/data/") for n in names)
    assert any(n.startswith("twinbench/twin/profiles/") and n.endswith(".json") for n in names)
    if engine_build() == "compiled":  # this machine compiles the engine core: so does the wheel
        for module in NATIVE_MODULES + ("_native__mypyc",):
            assert any(n.startswith(f"twinbench/twin/{module}.") and n.endswith(".so")
                       for n in names), module
        assert "twinbench/twin/_native_build.json" in names
