"""The twin: a step-level simulator of a vLLM V1 engine serving LoRA adapters (docs/twin.md)."""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys

# The engine core is compiled by mypyc at install time where it can be (setup.py). With
# TWINBENCH_PURE_PYTHON set, its modules are imported from their .py sources instead: same
# results, slower, visible to Python profilers and debuggers.
NATIVE_MODULES = ("engine", "waiting", "kvpool", "steptime", "adapters")
NATIVE_STAMP = "_native_build.json"  # {"sha256": {module: hash of the source compiled}}


class _SourceOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        pkg, _, name = fullname.rpartition(".")
        if pkg != __name__ or name not in NATIVE_MODULES:
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(os.path.dirname(__file__), name + ".py"))


def _native_is_stale() -> bool:
    """A compiled build whose sources have changed since (an editable install, edited): its
    C would silently ignore the edits, so the sources win. setup.py records their hashes."""
    here = os.path.dirname(__file__)
    if not any(os.path.exists(os.path.join(here, "engine" + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES):
        return False
    try:
        with open(os.path.join(here, NATIVE_STAMP), encoding="utf-8") as f:
            built = json.load(f)["sha256"]
        return any(built.get(name) != _sha256(os.path.join(here, name + ".py"))
                   for name in NATIVE_MODULES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


_PURE = bool(os.environ.get("TWINBENCH_PURE_PYTHON"))
_STALE = not _PURE and _native_is_stale()
if _STALE:
    print("twinbench: the twin's compiled engine was built from other sources than its .py "
          "files; running the .py files (rebuild: pip install -e .)", file=sys.stderr)
if _PURE or _STALE:
    sys.meta_path.insert(0, _SourceOnly())


def engine_build() -> str:
    """'compiled' when the engine core runs as mypyc-built C, 'pure Python' otherwise."""
    if _STALE:
        return "pure Python (the compiled build is stale)"
    spec = importlib.util.find_spec(__name__ + ".engine")  # (found, not imported)
    return "pure Python" if spec is None or str(spec.origin).endswith(".py") else "compiled"


def simulate(*args, **kwargs):
    from twinbench.twin.simulation import simulate as _simulate

    return _simulate(*args, **kwargs)


def simulate_cluster(*args, **kwargs):
    from twinbench.twin.cluster import simulate_cluster as _simulate_cluster

    return _simulate_cluster(*args, **kwargs)


__all__ = ["simulate", "simulate_cluster", "engine_build"]
