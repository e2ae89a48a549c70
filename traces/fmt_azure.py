"""Azure LLM inference traces (2023 and the 2024 week-long release).

Header `TIMESTAMP,ContextTokens,GeneratedTokens`; timestamps such as
`2023-11-16 18:15:46.6805900` carry 7 fractional digits (too many for
`datetime.fromisoformat` before Python 3.11), CRLF line endings, no final newline.
Arrivals are made relative to the first request.
"""
from __future__ import annotations

import re

import numpy as np

from twinbench.traces.core import Trace, TraceError
from twinbench.traces.table import (arrival_order, base_model_columns, file_meta, parse_ints,
                                    read_table)
from twinbench.traces.textfile import read_lines

COLUMNS = {"timestamp": ("TIMESTAMP",), "prompt": ("ContextTokens",),
           "output": ("GeneratedTokens",)}


TZ_SUFFIX = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")


def split_offsets(values: list[str]) -> tuple[list[str], np.ndarray]:
    """Strip UTC offsets (`+00:00`, `Z`; seen in some releases) -> (local strings, offset ns)."""
    cleaned, offsets = [], np.zeros(len(values), dtype=np.int64)
    for k, v in enumerate(values):
        v = v.strip()
        m = TZ_SUFFIX.search(v) if len(v) > 19 else None
        if m:
            tz = m.group(1)
            v = v[:m.start()]
            if tz != "Z":
                sign = -1 if tz[0] == "-" else 1
                digits = tz[1:].replace(":", "")
                offsets[k] = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60) * 10**9
        cleaned.append(v)
    return cleaned, offsets


def parse_timestamps(values: list[str], path: str, line_numbers: np.ndarray) -> np.ndarray:
    """Nanoseconds since the epoch (UTC when offsets are given) from ISO-like date-times."""
    offsets = None
    if values and TZ_SUFFIX.search(values[0].strip()) and len(values[0].strip()) > 19:
        cleaned, offsets = split_offsets(values)
    else:
        cleaned = [v.strip() for v in values]
    try:
        stamps = np.array(cleaned, dtype="datetime64[ns]")
    except ValueError:
        for k, v in enumerate(cleaned):
            try:
                np.datetime64(v, "ns")
            except ValueError:
                raise TraceError(f"TIMESTAMP: {values[k]!r} is not a date-time "
                                 "(expected e.g. 2023-11-16 18:15:46.6805900)", path,
                                 int(line_numbers[k])) from None
        raise
    nat = np.flatnonzero(np.isnat(stamps))
    if len(nat):
        k = int(nat[0])
        raise TraceError(f"TIMESTAMP: {values[k]!r} is not a date-time", path,
                         int(line_numbers[k]))
    ns = stamps.astype(np.int64)
    return ns - offsets if offsets is not None else ns


def load_azure(path: str, strict: bool = False, **_options) -> Trace:
    table = read_table(path, read_lines(path), COLUMNS, strict=strict)
    lines = table.line_numbers
    ns = parse_timestamps(table.columns["timestamp"], path, lines)
    prompt = parse_ints(table.columns["prompt"], "ContextTokens", path, lines)
    output = parse_ints(table.columns["output"], "GeneratedTokens", path, lines)
    order = arrival_order((ns - ns.min()).astype(np.float64) / 1e9, path, lines, strict)
    if order is not None:
        ns, prompt, output = ns[order], prompt[order], output[order]
    origin = int(ns[0])
    arrival = (ns - origin).astype(np.float64) / 1e9
    meta = file_meta(path, "azure",
                     origin_utc=str(np.datetime64(origin, "ns")))
    return Trace(arrival_s=arrival, adapter_idx=base_model_columns(len(arrival)),
                 prompt_tokens=prompt, output_tokens=output, meta=meta)
