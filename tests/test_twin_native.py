"""The compiled engine core (mypyc, setup.py) gives the records the pure-Python source gives."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from twinbench.twin import NATIVE_MODULES, engine_build

ROOT = Path(__file__).resolve().parents[1]

# Random workloads over the features the scheduler has (adapters over max_loras, chunked
# prefill, KV pressure with preemption, prefix caching, both modes); prints the build and one
# digest of every record's timing and the engine's counters.
SCRIPT = r"""
import hashlib, itertools, sys
import numpy as np
from twinbench.traces.core import Adapter, Trace
from twinbench.twin import engine_build, simulate
from twinbench.twin.config import ServerConfig

h = hashlib.sha256()
for seed, blocks, lora, chunked, prefix, mode in itertools.product(
        (0, 1), (80, None), (1, 3), (True, False), (False, True), ("coalesced", "step")):
    rng = np.random.default_rng(seed)
    n = 150
    tr = Trace(arrival_s=np.sort(rng.uniform(0, 20, n)),
               adapter_idx=np.where(rng.random(n) < 0.2, -1, rng.integers(0, 5, n)),
               prompt_tokens=rng.integers(1, 400, n), output_tokens=rng.integers(1, 200, n),
               adapters=[Adapter(f"a{k}", rank=(8, 16, 32)[k % 3]) for k in range(5)])
    if prefix:
        offsets = np.arange(0, 2 * n + 1, 2)
        tr.prefix_flat = rng.integers(0, 3, 2 * n)
        tr.prefix_offsets = offsets
        tr.meta["prefix_block_tokens"] = 64
    cfg = ServerConfig(max_num_seqs=16, max_num_batched_tokens=256 if chunked else 1024,
                       max_model_len=1024,
                       enable_chunked_prefill=chunked, long_prefill_token_threshold=64,
                       num_gpu_blocks=blocks, enable_prefix_caching=prefix, max_loras=lora,
                       max_lora_rank=32)
    res = simulate(tr, cfg, "llama-3.1-8b-h100", mode=mode)
    for r in sorted(res.records, key=lambda r: int(r.id)):
        h.update(repr((r.id, r.status, r.first_token_s, r.end_s, r.output_tokens,
                       None if r.chunk_times is None else r.chunk_times.tolist())).encode())
    h.update(repr(sorted((k, v) for k, v in res.stats.items() if k != "wall_s")).encode())
print(engine_build(), h.hexdigest())
"""


def run(pure: bool) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TWINBENCH_PURE_PYTHON"}
    if pure:
        env["TWINBENCH_PURE_PYTHON"] = "1"
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    build, _, digest = out.stdout.strip().rpartition(" ")
    return build, digest


def test_pure_python_switch_selects_the_source():
    build, _ = run(pure=True)
    assert build == "pure Python"


def test_compiled_engine_matches_the_source_exactly():
    if engine_build() != "compiled":
        pytest.skip("the engine core is not compiled in this install")
    compiled_build, compiled = run(pure=False)
    pure_build, pure = run(pure=True)
    assert (compiled_build, pure_build) == ("compiled", "pure Python")
    assert compiled == pure


def test_an_install_with_a_compiler_compiles_the_engine():
    """The README's install builds the C extension where a C compiler exists; a silent
    fallback would cost half the twin's speed without anyone noticing."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}): the pure-Python engine is expected")
    if os.environ.get("TWINBENCH_PURE_PYTHON"):
        pytest.skip("TWINBENCH_PURE_PYTHON is set")
    assert engine_build() == "compiled"


def test_setup_compiles_the_modules_the_package_checks():
    """setup.py cannot import the package it builds; its list must name the same modules."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists = [ast.literal_eval(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED"]
    assert lists == [list(NATIVE_MODULES)]


def test_a_failed_c_build_removes_the_older_engine_instead_of_vouching_for_it(tmp_path):
    """Type check passes, the C compile fails (no working compiler): the outputs of an
    earlier build must go, with the hash file, or the older engine would run as current."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}): nothing is compiled here in the first place")
    tree = tmp_path / "src"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "out", "*.so", "_native_build.json"))
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    older = [tree / "twin" / f"{name}{suffix}" for name in NATIVE_MODULES + ("_native__mypyc",)]
    for path in older:
        path.write_bytes(b"an older build")
    (tree / "twin" / "_native_build.json").write_text('{"sha256": {}}')
    env = {**os.environ, "CC": "/bin/false"}
    env.pop("TWINBENCH_PURE_PYTHON", None)
    # an editable install (built in place, as the README's) into a prefix of its own;
    # --ignore-installed, or pip would first uninstall the twinbench running these tests
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed",
                    "-q", "-e", str(tree),
                    "--prefix", str(tmp_path / "prefix")],
                   check=True, capture_output=True, env=env)
    assert not any(path.exists() for path in older)
    assert not (tree / "twin" / "_native_build.json").exists()
