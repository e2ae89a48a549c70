"""The header every native trace file carries: adapter catalog, tenants, meta.

Shared by the JSONL, CSV and `.npz` native variants so all three round-trip the same
information exactly.
"""
from __future__ import annotations

import json
import os

import numpy as np

from twinbench.traces.core import Adapter, Trace, TraceError

VERSION = 1
MAGIC = "twinbench_trace"


def json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def header_of(trace: Trace) -> dict:
    return {MAGIC: VERSION, "requests": len(trace),
            "adapters": [a.to_dict() for a in trace.adapters],
            "tenants": list(trace.tenants), "meta": trace.meta}


def header_json(trace: Trace) -> str:
    return json.dumps(header_of(trace), default=json_default, separators=(",", ":"))


def parse_header(obj, path: str, line: int) -> tuple[list[Adapter], list[str], dict]:
    """Adapter catalog, tenants and saved meta from a header object."""
    if not isinstance(obj, dict) or obj.get(MAGIC) != VERSION:
        raise TraceError(f"not a version-{VERSION} twinbench trace header", path, line)
    adapters_raw = obj.get("adapters", [])
    tenants = obj.get("tenants", [])
    meta = obj.get("meta", {})
    if not isinstance(adapters_raw, list) or not isinstance(tenants, list) or \
            not isinstance(meta, dict) or not all(isinstance(t, str) for t in tenants):
        raise TraceError("header: adapters and tenants must be lists, meta an object", path, line)
    adapters = []
    for k, a in enumerate(adapters_raw):
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not a["name"]:
            raise TraceError(f"header: adapter {k} needs a non-empty name", path, line)
        rank = a.get("rank", 16)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise TraceError(f"header: adapter {a['name']!r} rank must be an integer >= 1",
                             path, line)
        if a.get("path") is not None and not isinstance(a["path"], str):
            raise TraceError(f"header: adapter {a['name']!r} path must be a string", path, line)
        adapters.append(Adapter.from_dict(a))
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise TraceError("header: duplicate adapter names", path, line)
    return adapters, list(tenants), meta


def loaded_meta(saved: dict, path: str, fmt: str) -> dict:
    """The saved meta, with where it now comes from; the saved origin kept as `derived_from`."""
    from twinbench.traces.table import file_meta

    meta = dict(saved)
    fresh = file_meta(path, fmt)
    if saved.get("source") is not None:
        meta["derived_from"] = {k: saved.get(k) for k in ("source", "format", "sha256")}
    meta.update(source=fresh["source"], format=fmt, sha256=fresh["sha256"])
    meta.setdefault("transforms", [])
    meta.setdefault("seed", None)
    return meta


def check_names_for_text(trace: Trace, path: str) -> None:
    """Text variants keep one request per line: names must be single-line and non-empty."""
    def bad(s: str) -> bool:
        return not s or "\n" in s or "\r" in s

    for a in trace.adapters:
        if bad(a.name):
            raise TraceError(f"adapter name {a.name!r} is empty or spans lines", path)
    for t in trace.tenants:
        if bad(t):
            raise TraceError(f"tenant name {t!r} is empty or spans lines", path)
    if trace.ids is not None:
        for i in trace.ids:
            if bad(str(i)):
                raise TraceError(f"request id {str(i)!r} is empty or spans lines", path)


def absolute(path: str) -> str:
    return os.path.abspath(path)
