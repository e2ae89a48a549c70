"""Bundled sample traces (package data under `traces/data/`, see its README for sources).

`bundled("azure_conv")` is the default trace of every command that takes one.
"""
from __future__ import annotations

import os

from twinbench.traces.core import TraceError

DEFAULT = "azure_conv"
SAMPLES = {
    "azure_conv": "azure_conv_2023_first600s.csv",
    "azure_code": "azure_code_2023_first600s.csv",
    "mooncake": "mooncake_synthetic_first400.jsonl",
    "sharegpt": "sharegpt_lengths_first2000.csv",
    "servegen": "servegen_day1",
    "paper_workload": "paper_rate_classes.workload.json",
    "zipf_workload": "zipf64_poisson.workload.json",
}


def data_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def bundled(name: str = DEFAULT) -> str:
    """Path of a bundled sample: one of `SAMPLES`."""
    if name not in SAMPLES:
        raise TraceError(f"no bundled sample {name!r}; choose one of {', '.join(SAMPLES)}")
    return os.path.join(data_dir(), SAMPLES[name])


def resolve(source: str, base_dir: str | None = None) -> str:
    """`bundled:NAME` to its path; a relative path against `base_dir` (e.g. a workload file's
    folder) when given."""
    if source.startswith("bundled:"):
        return bundled(source[len("bundled:"):])
    source = os.path.expanduser(source)
    if base_dir and not os.path.isabs(source):
        return os.path.join(base_dir, source)
    return source
