"""Native binary variant: the trace's columns in an uncompressed NumPy `.npz` archive.

The fastest native path for millions of requests (no text parsing). Holds the same header
as the text variants (catalog, tenants, meta) as UTF-8 JSON bytes; read with
`allow_pickle=False`, so a file can never run code.
"""
from __future__ import annotations

import json
import zipfile

import numpy as np

from twinbench.traces.core import Trace, TraceError
from twinbench.traces.fmt_native_csv import sort_loaded
from twinbench.traces.native_header import header_json, loaded_meta, parse_header

REQUIRED = ("header", "arrival_s", "adapter_idx", "prompt_tokens", "output_tokens", "priority")


def save_native_npz(trace: Trace, path: str) -> None:
    arrays = {
        "header": np.frombuffer(header_json(trace).encode("utf-8"), dtype=np.uint8),
        "arrival_s": trace.arrival_s, "adapter_idx": trace.adapter_idx,
        "prompt_tokens": trace.prompt_tokens, "output_tokens": trace.output_tokens,
        "priority": trace.priority,
    }
    if trace.ids is not None:
        arrays["ids"] = np.array([str(i) for i in trace.ids], dtype=str)
    if trace.tenant_idx is not None:
        arrays["tenant_idx"] = trace.tenant_idx
    if trace.prefix_flat is not None:
        arrays["prefix_flat"] = trace.prefix_flat
        arrays["prefix_offsets"] = trace.prefix_offsets
    if trace.prompts is not None:
        arrays["prompt_missing"] = np.array([p is None for p in trace.prompts], dtype=bool)
        arrays["prompts"] = np.array(["" if p is None else p for p in trace.prompts], dtype=str)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


def load_native_npz(path: str, strict: bool = False, **_options) -> Trace:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise TraceError(f"not a twinbench .npz trace: missing array(s) "
                                 f"{', '.join(missing)}", path, 1)
            cols = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise TraceError(f"not a readable .npz archive ({e})", path, 1) from None
    try:
        header = json.loads(cols["header"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TraceError("header array is not JSON", path, 1) from None
    adapters, tenants, saved = parse_header(header, path, 1)
    n = len(cols["arrival_s"])
    for k, v in cols.items():
        if k not in ("header", "prefix_flat", "prefix_offsets") and len(v) != n:
            raise TraceError(f"array {k} has {len(v)} rows, arrival_s has {n}", path, 1)
    check_columns(cols, len(adapters), len(tenants), path)
    prompts = None
    if "prompts" in cols:
        prompts = cols["prompts"].astype(object)
        prompts[cols.get("prompt_missing", np.zeros(n, bool))] = None
    trace = Trace(
        arrival_s=cols["arrival_s"], adapter_idx=cols["adapter_idx"],
        prompt_tokens=cols["prompt_tokens"], output_tokens=cols["output_tokens"],
        priority=cols["priority"],
        ids=cols["ids"].astype(object) if "ids" in cols else None,
        adapters=adapters, tenant_idx=cols.get("tenant_idx"), tenants=tenants,
        prefix_flat=cols.get("prefix_flat"), prefix_offsets=cols.get("prefix_offsets"),
        prompts=prompts, meta=loaded_meta(saved, path, "native-npz"))
    # arrays have no lines: report the row (1-based) as the "line"
    return sort_loaded(trace, path, np.arange(1, n + 1), strict)


def check_columns(cols: dict, n_adapters: int, n_tenants: int, path: str) -> None:
    def row_error(name: str, bad: np.ndarray, what: str) -> None:
        if len(bad):
            raise TraceError(f"array {name} row {int(bad[0]) + 1}: {what}", path, 1)

    row_error("arrival_s", np.flatnonzero(~np.isfinite(cols["arrival_s"])), "not finite")
    for name in ("prompt_tokens", "output_tokens"):
        row_error(name, np.flatnonzero(cols[name] < 1), "token count must be >= 1")
    row_error("adapter_idx", np.flatnonzero((cols["adapter_idx"] < -1) |
                                            (cols["adapter_idx"] >= n_adapters)),
              "not an index into the adapter catalog")
    if "tenant_idx" in cols:
        row_error("tenant_idx", np.flatnonzero((cols["tenant_idx"] < -1) |
                                               (cols["tenant_idx"] >= n_tenants)),
                  "not an index into the tenants")
    if "prefix_offsets" in cols:
        off = cols["prefix_offsets"]
        if len(off) != len(cols["arrival_s"]) + 1 or off[0] != 0 or np.any(np.diff(off) < 0) \
                or off[-1] != len(cols.get("prefix_flat", ())):
            raise TraceError("array prefix_offsets is not a valid ragged index", path, 1)
