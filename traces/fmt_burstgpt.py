"""BurstGPT CSV: `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`.

Timestamps are seconds from the trace start. Rows with 0 response tokens are failed
requests: dropped by default (counted in `meta["failed_dropped"]`, with a warning), or kept
with a one-token output when `failed="keep"`. The `Model` column becomes the tenant, a
natural adapter candidate (`assign_adapters(trace, "tenant", ...)`).
"""
from __future__ import annotations

import numpy as np

from twinbench.traces.core import Trace, TraceError
from twinbench.traces.errors import warn
from twinbench.traces.table import (arrival_order, base_model_columns, file_meta, parse_floats,
                                    parse_ints, read_table)
from twinbench.traces.textfile import read_lines

COLUMNS = {"timestamp": ("Timestamp",), "model": ("Model",), "prompt": ("Request tokens",),
           "output": ("Response tokens",), "total": ("Total tokens",),
           "log_type": ("Log Type",)}
OPTIONAL = ("total", "log_type")


def load_burstgpt(path: str, strict: bool = False, failed: str = "drop", **_options) -> Trace:
    if failed not in ("drop", "keep"):
        raise TraceError(f"failed={failed!r}: expected 'drop' or 'keep'", path)
    table = read_table(path, read_lines(path), COLUMNS, optional=OPTIONAL, strict=strict)
    lines = table.line_numbers
    t = parse_floats(table.columns["timestamp"], "Timestamp", path, lines)
    prompt = parse_ints(table.columns["prompt"], "Request tokens", path, lines)
    output = parse_ints(table.columns["output"], "Response tokens", path, lines, minimum=0)
    models = np.array(table.columns["model"], dtype=object)
    failed_rows = output == 0
    n_failed = int(failed_rows.sum())
    if n_failed and failed == "drop":
        first = int(lines[np.flatnonzero(failed_rows)[0]])
        warn(f"dropped {n_failed} failed request(s) with 0 response tokens "
             "(first here; keep them with failed='keep')", path, first)
        keep = ~failed_rows
        t, prompt, output, models, lines = (t[keep], prompt[keep], output[keep], models[keep],
                                            lines[keep])
        if not len(t):
            raise TraceError("every request failed (0 response tokens; keep them with "
                             "failed='keep')", path, first)
    elif n_failed:
        output = np.maximum(output, 1)
    order = arrival_order(t, path, lines, strict)
    if order is not None:
        t, prompt, output, models = t[order], prompt[order], output[order], models[order]
    tenants, tenant_idx = np.unique(models.astype(str), return_inverse=True)
    origin = float(t[0])
    meta = file_meta(path, "burstgpt", origin_offset_s=origin, failed_rows=n_failed,
                     failed_policy=failed)
    return Trace(arrival_s=t - origin, adapter_idx=base_model_columns(len(t)),
                 prompt_tokens=prompt, output_tokens=output,
                 tenant_idx=tenant_idx.astype(np.int32), tenants=[str(x) for x in tenants],
                 meta=meta)
