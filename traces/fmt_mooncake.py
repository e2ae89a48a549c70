"""Mooncake (FAST '25) JSONL traces.

One object per line: `{"timestamp": ms, "input_length": n, "output_length": n,
"hash_ids": [...]}`. Each hash id stands for one 512-token prompt block and equal ids mean a
shared prefix: they become `prefix_blocks`, with `meta["prefix_block_tokens"] = 512`.
Timestamps are integer milliseconds and may repeat; arrivals are made relative to the first.
"""
from __future__ import annotations

import json

import numpy as np

from twinbench.traces.core import Trace, TraceError
from twinbench.traces.errors import warn
from twinbench.traces.table import arrival_order, base_model_columns, file_meta
from twinbench.traces.textfile import read_lines

PREFIX_BLOCK_TOKENS = 512
KNOWN = {"timestamp", "input_length", "output_length", "hash_ids"}


def as_int(obj: dict, key: str, path: str, line: int, minimum: int) -> int:
    if key not in obj:
        raise TraceError(f"missing field {key!r}", path, line)
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (
            float("inf"), float("-inf")):
        raise TraceError(f"{key}: {v!r} is not a number", path, line)
    if v != int(v):
        raise TraceError(f"{key}: {v!r} is not a whole number", path, line)
    if v < minimum:
        raise TraceError(f"{key}: must be >= {minimum}, got {v}", path, line)
    return int(v)


def load_mooncake(path: str, strict: bool = False, **_options) -> Trace:
    lines = read_lines(path)
    stamps, prompt, output, line_numbers = [], [], [], []
    flat: list[int] = []
    offsets = [0]
    unknown: set[str] = set()
    for i, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"invalid JSON: {e.msg} at column {e.colno}", path, i) from None
        if not isinstance(obj, dict):
            raise TraceError(f"expected a JSON object, got {type(obj).__name__}", path, i)
        stamps.append(as_int(obj, "timestamp", path, i, 0))
        prompt.append(as_int(obj, "input_length", path, i, 1))
        output.append(as_int(obj, "output_length", path, i, 1))
        hashes = obj.get("hash_ids", [])
        if not isinstance(hashes, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hashes):
            raise TraceError("hash_ids: expected a list of integers", path, i)
        flat.extend(hashes)
        offsets.append(len(flat))
        line_numbers.append(i)
        if obj.keys() - KNOWN:
            unknown |= obj.keys() - KNOWN
    if not stamps:
        raise TraceError("no requests", path, 1)
    if unknown:
        msg = f"unknown field(s) {', '.join(sorted(unknown))}"
        if strict:
            raise TraceError(msg, path, line_numbers[0])
        warn(msg + " (ignored)", path, line_numbers[0])
    lines_arr = np.array(line_numbers, dtype=np.int64)
    stamps_ms = np.array(stamps, dtype=np.int64)
    origin_ms = int(stamps_ms.min())
    arrival = (stamps_ms - origin_ms).astype(np.float64) / 1000.0  # the first request at 0
    trace = Trace(arrival_s=arrival, adapter_idx=base_model_columns(len(arrival)),
                  prompt_tokens=np.array(prompt), output_tokens=np.array(output),
                  prefix_flat=np.array(flat, dtype=np.int64),
                  prefix_offsets=np.array(offsets, dtype=np.int64),
                  meta=file_meta(path, "mooncake", prefix_block_tokens=PREFIX_BLOCK_TOKENS,
                                 origin_offset_s=origin_ms / 1000.0))
    order = arrival_order(arrival, path, lines_arr, strict)
    if order is not None:
        trace = trace.select(order)
        trace.meta["transforms"] = []
    return trace
