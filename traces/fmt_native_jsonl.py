"""Native JSONL: a header object, then one request object per line; exact round trip.

    {"twinbench_trace": 1, "requests": n, "adapters": [...], "tenants": [...], "meta": {...}}
    {"id": "r1", "arrival_s": 0.25, "adapter": "lora-0", "prompt_tokens": 512,
     "output_tokens": 64, "tenant": "t", "priority": 0, "prefix_blocks": [1, 2], "prompt": "..."}

Only `arrival_s`, `prompt_tokens` and `output_tokens` are required; the header is optional
for hand-written files. Readable by anything that reads JSON Lines.
"""
from __future__ import annotations

import itertools
import json

import numpy as np

from twinbench.traces.core import Adapter, Trace, TraceError
from twinbench.traces.errors import warn
from twinbench.traces.fmt_native_csv import sort_loaded
from twinbench.traces.jsonl_fast import NotPlain, load_columns
from twinbench.traces.native_header import (MAGIC, check_names_for_text, header_json,
                                            loaded_meta, parse_header)
from twinbench.traces.textfile import check_text_bytes, sniff

FIELDS = {"id", "arrival_s", "adapter", "prompt_tokens", "output_tokens", "tenant", "priority",
          "prefix_blocks", "prompt"}


def save_native_jsonl(trace: Trace, path: str) -> None:
    check_names_for_text(trace, path)
    enc = json.JSONEncoder(ensure_ascii=False).encode
    adapter_json = [enc(a.name) for a in trace.adapters] + ["null"]  # index -1 -> null
    tenant_json = [enc(t) for t in trace.tenants] + ["null"]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header_json(trace) + "\n")
        for a in range(0, len(trace), 100_000):
            b = min(a + 100_000, len(trace))
            f.write("".join(record_lines(trace, a, b, enc, adapter_json, tenant_json)))


def record_lines(trace: Trace, a: int, b: int, enc, adapter_json: list[str],
                 tenant_json: list[str]) -> list[str]:
    """One JSON object per request, formatted directly (much faster than json.dumps of dicts;
    floats use repr, which is exactly what json writes)."""
    parts = [[f'{{"id": {enc(str(x))}, ' for x in trace.ids[a:b]] if trace.ids is not None
             else itertools.repeat("{", b - a),
             [f'"arrival_s": {x!r}, ' for x in trace.arrival_s[a:b].tolist()],
             [f'"adapter": {adapter_json[k]}, ' for k in trace.adapter_idx[a:b].tolist()],
             [f'"prompt_tokens": {p}, "output_tokens": {o}'
              for p, o in zip(trace.prompt_tokens[a:b].tolist(),
                              trace.output_tokens[a:b].tolist())],
             [f', "priority": {x}' if x else "" for x in trace.priority[a:b].tolist()]]
    if trace.tenant_idx is not None:
        parts.append([f', "tenant": {tenant_json[k]}' for k in trace.tenant_idx[a:b].tolist()])
    if trace.prefix_flat is not None:
        off, flat = trace.prefix_offsets, trace.prefix_flat
        parts.append([f', "prefix_blocks": [{", ".join(map(str, flat[off[i]:off[i + 1]].tolist()))}]'
                      for i in range(a, b)])
    if trace.prompts is not None:
        parts.append([f', "prompt": {"null" if p is None else enc(p)}'
                      for p in trace.prompts[a:b]])
    parts.append(itertools.repeat("}\n", b - a))
    return ["".join(row) for row in zip(*parts)]


def whole(v, key: str, path: str, line: int, minimum: int | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise TraceError(f"{key}: {v!r} is not an integer", path, line)
    if minimum is not None and v < minimum:
        raise TraceError(f"{key}: must be >= {minimum}, got {v}", path, line)
    if abs(v) > 2**31 - 1:
        raise TraceError(f"{key}: {v} is too large", path, line)
    return v


def name_or_none(v, key: str, path: str, line: int) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise TraceError(f"{key}: expected a non-empty string or null, got {v!r}", path, line)
    return v


def load_native_jsonl(path: str, strict: bool = False, **_options) -> Trace:
    check_text_bytes(sniff(path), path)
    try:
        return load_plain(path, strict)
    except NotPlain:
        return load_careful(path, strict)


def load_plain(path: str, strict: bool) -> Trace:
    """The fast path (see `jsonl_fast`): many lines per JSON call, columns checked at once."""
    parsed = load_columns(path)
    c, seen, n = parsed["cols"], parsed["seen"], parsed["n"]
    catalog = parsed["catalog"] + [Adapter(name) for name in
                                   parsed["adapters"][len(parsed["catalog"]):]]
    prefix = "prefix_blocks" in seen
    trace = Trace(
        arrival_s=np.concatenate(c["arrival_s"]), adapter_idx=np.concatenate(c["adapter"]),
        prompt_tokens=np.concatenate(c["prompt_tokens"]),
        output_tokens=np.concatenate(c["output_tokens"]),
        priority=np.concatenate(c["priority"]),
        ids=np.concatenate(c["id"]) if "id" in seen else None, adapters=catalog,
        tenant_idx=np.concatenate(c["tenant"]) if "tenant" in seen else None,
        tenants=parsed["tenants"],
        prefix_flat=np.concatenate(c["prefix_flat"]) if prefix else None,
        prefix_offsets=np.concatenate([[0], np.cumsum(np.concatenate(c["prefix_counts"]))])
        .astype(np.int64) if prefix else None,
        prompts=np.concatenate(c["prompt"]) if "prompt" in seen else None,
        meta=loaded_meta(parsed["saved"], path, "native-jsonl"))
    first_line = 2 if parsed["header"] else 1
    return sort_loaded(trace, path, np.arange(first_line, first_line + n), strict)


def load_careful(path: str, strict: bool) -> Trace:
    """Line by line, naming the line of anything wrong."""
    adapters: list[Adapter] = []
    tenants: list[str] = []
    saved: dict = {}
    arrival, adapter, prompt_t, output_t, priority, lines = [], [], [], [], [], []
    ids, tenant, prompts, flat, offsets = [], [], [], [], [0]
    has = {"id": False, "tenant": False, "prefix_blocks": False, "prompt": False}
    unknown: set[str] = set()
    lineno = 0
    adapter_index: dict[str, int] = {}
    tenant_index: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    raise TraceError(f"invalid JSON: {e.msg} at column {e.colno}", path,
                                     lineno) from None
                if not isinstance(rec, dict):
                    raise TraceError(f"expected a JSON object, got {type(rec).__name__}",
                                     path, lineno)
                if MAGIC in rec:
                    if lines:
                        raise TraceError("header object after the first request", path, lineno)
                    adapters, tenants, saved = parse_header(rec, path, lineno)
                    adapter_index = {a.name: i for i, a in enumerate(adapters)}
                    tenant_index = {t: i for i, t in enumerate(tenants)}
                    continue
                for key in ("arrival_s", "prompt_tokens", "output_tokens"):
                    if key not in rec:
                        raise TraceError(f"missing field {key!r}", path, lineno)
                t = rec["arrival_s"]
                if isinstance(t, bool) or not isinstance(t, (int, float)) or t != t or \
                        t in (float("inf"), float("-inf")):
                    raise TraceError(f"arrival_s: {t!r} is not a finite number", path, lineno)
                arrival.append(float(t))
                prompt_t.append(whole(rec["prompt_tokens"], "prompt_tokens", path, lineno, 1))
                output_t.append(whole(rec["output_tokens"], "output_tokens", path, lineno, 1))
                priority.append(whole(rec.get("priority", 0), "priority", path, lineno, None))
                name = name_or_none(rec.get("adapter"), "adapter", path, lineno)
                if name is None:
                    adapter.append(-1)
                else:
                    if name not in adapter_index:
                        adapter_index[name] = len(adapters)
                        adapters.append(Adapter(name))
                    adapter.append(adapter_index[name])
                if "id" in rec:
                    has["id"] = True
                    rid = rec["id"]
                    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
                        raise TraceError(f"id: expected a non-empty string, got {rid!r}", path,
                                         lineno)
                ids.append(str(rec["id"]) if "id" in rec else None)
                tname = name_or_none(rec.get("tenant"), "tenant", path, lineno)
                has["tenant"] |= "tenant" in rec
                if tname is None:
                    tenant.append(-1)
                else:
                    if tname not in tenant_index:
                        tenant_index[tname] = len(tenants)
                        tenants.append(tname)
                    tenant.append(tenant_index[tname])
                blocks = rec.get("prefix_blocks")
                if "prefix_blocks" in rec:
                    has["prefix_blocks"] = True
                    if blocks is not None and (not isinstance(blocks, list) or not all(
                            isinstance(b, int) and not isinstance(b, bool) for b in blocks)):
                        raise TraceError("prefix_blocks: expected a list of integers", path,
                                         lineno)
                flat.extend(blocks or ())
                offsets.append(len(flat))
                p = rec.get("prompt")
                if p is not None and not isinstance(p, str):
                    raise TraceError("prompt: expected a string", path, lineno)
                has["prompt"] |= "prompt" in rec
                prompts.append(p)
                lines.append(lineno)
                if not rec.keys() <= FIELDS:
                    unknown |= rec.keys() - FIELDS
    except UnicodeDecodeError:
        raise TraceError("not UTF-8 text", path, lineno + 1) from None
    if not lines:
        raise TraceError("no requests", path, max(lineno, 1))
    if unknown:
        msg = f"unknown field(s) {', '.join(sorted(unknown))}"
        if strict:
            raise TraceError(msg, path, lines[0])
        warn(msg + " (ignored)", path, lines[0])
    if has["id"] and any(i is None for i in ids):
        k = ids.index(None)
        raise TraceError("id: missing (other requests have one)", path, lines[k])
    trace = Trace(
        arrival_s=np.array(arrival, dtype=np.float64),
        adapter_idx=np.array(adapter, dtype=np.int32),
        prompt_tokens=np.array(prompt_t, dtype=np.int32),
        output_tokens=np.array(output_t, dtype=np.int32),
        priority=np.array(priority, dtype=np.int32),
        ids=np.array(ids, dtype=object) if has["id"] else None,
        adapters=adapters,
        tenant_idx=np.array(tenant, dtype=np.int32) if has["tenant"] else None,
        tenants=tenants,
        prefix_flat=np.array(flat, dtype=np.int64) if has["prefix_blocks"] else None,
        prefix_offsets=np.array(offsets, dtype=np.int64) if has["prefix_blocks"] else None,
        prompts=np.array(prompts, dtype=object) if has["prompt"] else None,
        meta=loaded_meta(saved, path, "native-jsonl"))
    return sort_loaded(trace, path, np.array(lines, dtype=np.int64), strict)
