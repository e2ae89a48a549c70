"""Request streams: the `Request` / `Trace` types, loaders, generators and transforms.

Public API (other parts call exactly these):
    load(path, format=None, strict=False, **options) -> Trace
    save(trace, path, format=None)
    generate(workload, seed=0) -> Trace          workload: dict or Workload
    load_workload(path) -> Workload
    assign_adapters(trace, scheme, n_adapters, seed=0, ranks=(8, 16, 32), weights=None)
    window, time_scale, rescale_rate, subsample, head, clip_lengths, merge, shift_to_zero
    bundled(name="azure_conv") -> str
    inspect_stats(trace) -> dict
Heavy submodules are imported on first use, so `import twinbench.traces` stays cheap.
"""
from __future__ import annotations

import importlib

from twinbench.traces.core import Adapter, Request, Trace, TraceError

_LAZY = {
    "load": "io", "save": "io", "detect_format": "io",
    "generate": "workload", "load_workload": "workload", "Workload": "workload",
    "parse_workload": "workload",
    "assign_adapters": "assign",
    "window": "transforms", "time_scale": "transforms", "rescale_rate": "transforms",
    "subsample": "transforms", "head": "transforms", "clip_lengths": "transforms",
    "merge": "transforms", "shift_to_zero": "transforms",
    "bundled": "samples",
    "inspect_stats": "stats",
}

__all__ = ["Adapter", "Request", "Trace", "TraceError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"twinbench.traces.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'twinbench.traces' has no attribute {name!r}")
