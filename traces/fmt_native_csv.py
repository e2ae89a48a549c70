"""Native CSV: one request per line, exact round trip, fast for millions of rows.

    # twinbench-trace {"twinbench_trace":1,"adapters":[...],"tenants":[...],"meta":{...}}
    id,arrival_s,adapter,prompt_tokens,output_tokens,tenant,priority,prefix_blocks,prompt

Only `arrival_s,prompt_tokens,output_tokens` are required (so hand-written files work);
absent columns mean absent data (no ids = row numbers, empty adapter = base model).
`arrival_s` is written with Python's shortest round-trip float repr; `prefix_blocks` is
space-separated hash ids; `prompt` is a JSON string (so newlines never split a record).
Files are written and read in chunks of rows, so memory stays flat.
"""
from __future__ import annotations

import csv
import itertools
import json

import numpy as np

from twinbench.traces.core import Adapter, Trace, TraceError
from twinbench.traces.native_header import (check_names_for_text, header_json, loaded_meta,
                                            parse_header)
from twinbench.traces.table import arrival_order, parse_floats, parse_ints

COMMENT = "# twinbench-trace "
COLUMNS = ("id", "arrival_s", "adapter", "prompt_tokens", "output_tokens", "tenant",
           "priority", "prefix_blocks", "prompt")
REQUIRED = ("arrival_s", "prompt_tokens", "output_tokens")
CHUNK_ROWS = 100_000


def quote(s: str) -> str:
    if any(c in s for c in ',"') or s != s.strip():
        return '"' + s.replace('"', '""') + '"'
    return s


def save_native_csv(trace: Trace, path: str) -> None:
    check_names_for_text(trace, path)
    present = ["arrival_s", "adapter", "prompt_tokens", "output_tokens", "priority"]
    if trace.ids is not None:
        present.insert(0, "id")
    if trace.tenant_idx is not None:
        present.append("tenant")
    if trace.prefix_flat is not None:
        present.append("prefix_blocks")
    if trace.prompts is not None:
        present.append("prompt")
    present.sort(key=COLUMNS.index)
    adapter_table = [quote(a.name) for a in trace.adapters] + [""]  # -1 picks ""
    tenant_table = [quote(t) for t in trace.tenants] + [""]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(COMMENT + header_json(trace) + "\n")
        f.write(",".join(present) + "\n")
        for a in range(0, len(trace), CHUNK_ROWS):
            b = min(a + CHUNK_ROWS, len(trace))
            cols = [column_text(trace, name, a, b, adapter_table, tenant_table)
                    for name in present]
            f.write("\n".join(map(",".join, zip(*cols))))
            f.write("\n")


def column_text(trace: Trace, name: str, a: int, b: int, adapter_table: list[str],
                tenant_table: list[str]) -> list[str]:
    if name == "id":
        return [quote(str(x)) for x in trace.ids[a:b]]
    if name == "arrival_s":
        return list(map(repr, trace.arrival_s[a:b].tolist()))
    if name == "adapter":
        return [adapter_table[k] for k in trace.adapter_idx[a:b].tolist()]
    if name in ("prompt_tokens", "output_tokens", "priority"):
        return list(map(str, getattr(trace, name)[a:b].tolist()))
    if name == "tenant":
        return [tenant_table[k] for k in trace.tenant_idx[a:b].tolist()]
    if name == "prefix_blocks":
        off, flat = trace.prefix_offsets, trace.prefix_flat
        return [" ".join(map(str, flat[off[i]:off[i + 1]].tolist())) for i in range(a, b)]
    return ["" if p is None else quote(json.dumps(p, ensure_ascii=False))
            for p in trace.prompts[a:b]]


class Columns:
    """Accumulates parsed chunks of a native CSV."""

    def __init__(self, names: list[str], adapters: list[Adapter], tenants: list[str]):
        self.names = names
        self.adapters = adapters
        self.adapter_index = {a.name: i for i, a in enumerate(adapters)}
        self.adapter_index[""] = -1
        self.tenants = tenants
        self.tenant_index = {t: i for i, t in enumerate(tenants)}
        self.tenant_index[""] = -1
        self.parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        self.prompts: list[object] = []
        self.line_parts: list[np.ndarray] = []

    def lookup(self, values, index: dict, grow) -> np.ndarray:
        try:
            return np.array([index[v] for v in values], dtype=np.int32)
        except KeyError:
            for v in values:
                if v not in index:
                    index[v] = grow(v)
            return np.array([index[v] for v in values], dtype=np.int32)

    def add_adapter(self, name: str) -> int:
        self.adapters.append(Adapter(name))
        return len(self.adapters) - 1

    def add_tenant(self, name: str) -> int:
        self.tenants.append(name)
        return len(self.tenants) - 1

    def add(self, columns: list[list[str]], lines: np.ndarray, path: str) -> None:
        cols = dict(zip(self.names, columns))
        self.line_parts.append(lines)
        for name, values in cols.items():
            if name == "arrival_s":
                arr = parse_floats(values, name, path, lines)
            elif name in ("prompt_tokens", "output_tokens"):
                arr = parse_ints(values, name, path, lines).astype(np.int32)
            elif name == "priority":
                arr = parse_ints(values, name, path, lines, minimum=None,
                                 what="priority").astype(np.int32)
            elif name == "adapter":
                arr = self.lookup(values, self.adapter_index, self.add_adapter)
            elif name == "tenant":
                arr = self.lookup(values, self.tenant_index, self.add_tenant)
            elif name == "id":
                arr = np.array(values, dtype=object)
            elif name == "prefix_blocks":
                arr = self.parse_prefix(values, path, lines)
            else:
                arr = np.array([self.parse_prompt(v, path, int(lines[k]))
                                for k, v in enumerate(values)], dtype=object)
            self.parts[name].append(arr)

    @staticmethod
    def parse_prefix(values, path: str, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.array([len(v.split()) for v in values], dtype=np.int64)
        try:
            flat = np.array(" ".join(values).split(), dtype=np.int64)
        except (ValueError, OverflowError):
            for k, v in enumerate(values):
                try:
                    [int(x) for x in v.split()]
                except ValueError:
                    raise TraceError(f"prefix_blocks: {v!r} is not space-separated integers",
                                     path, int(lines[k])) from None
            raise
        return counts, flat

    @staticmethod
    def parse_prompt(v: str, path: str, line: int):
        if v == "":
            return None
        try:
            p = json.loads(v)
        except json.JSONDecodeError:
            raise TraceError("prompt: not a JSON string", path, line) from None
        if not isinstance(p, str):
            raise TraceError("prompt: not a JSON string", path, line)
        return p


def split_block(block: str, lines: np.ndarray, width: int, path: str) -> list[list[str]]:
    """Columns of a block of lines (joined by newlines, none at the end).

    Plain blocks are split in two C-level passes: newlines become a marker field, so a
    block whose rows all have `width` fields has the marker at every (width+1)-th place.
    Quoted fields take the csv module's slower path.
    """
    n = len(lines)
    if '"' not in block:
        flat = (block + "\n").replace("\n", ",\n,").split(",")
        flat.pop()
        if len(flat) == n * (width + 1) and flat[width::width + 1].count("\n") == n:
            return [flat[k::width + 1] for k in range(width)]
        widths = np.array([t.count(",") + 1 for t in block.split("\n")], dtype=np.int64)
        rows = None
    else:
        rows = list(csv.reader(block.split("\n")))
        widths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(widths != width)
    if len(bad):
        k = int(bad[0])
        what = "missing" if widths[k] < width else "extra"
        raise TraceError(f"{widths[k]} fields, header has {width} ({what} columns)",
                         path, int(lines[k]))
    if rows is None or len(rows) != n:
        raise TraceError("malformed rows (line breaks inside a field?)", path, int(lines[0]))
    return [list(col) for col in zip(*rows)]


def read_header(f, path: str) -> tuple[list[str], list[Adapter], list[str], dict, int]:
    """(column names, adapters, tenants, saved meta, line number of the column header)."""
    first = f.readline().rstrip("\r\n")
    lineno = 1
    adapters, tenants, saved = [], [], {}
    if first.startswith(COMMENT.strip()):
        try:
            obj = json.loads(first[len(COMMENT.strip()):])
        except json.JSONDecodeError as e:
            raise TraceError(f"header comment: invalid JSON ({e.msg})", path, 1) from None
        adapters, tenants, saved = parse_header(obj, path, 1)
        first = f.readline().rstrip("\r\n")
        lineno = 2
    names = [n.strip() for n in next(csv.reader([first]))] if first else []
    for r in REQUIRED:
        if r not in names:
            raise TraceError(f"missing column {r!r} (header is {first!r})", path, lineno)
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise TraceError(f"unknown column(s) {', '.join(map(repr, unknown))}; native columns "
                         f"are {','.join(COLUMNS)}", path, lineno)
    if len(set(names)) != len(names):
        raise TraceError("duplicate column names", path, lineno)
    return names, adapters, tenants, saved, lineno


def load_native_csv(path: str, strict: bool = False, **_options) -> Trace:
    from twinbench.traces.textfile import check_text_bytes, sniff

    check_text_bytes(sniff(path), path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # universal newlines: CRLF reads as LF
            names, adapters, tenants, saved, lineno = read_header(f, path)
            acc = Columns(names, adapters, tenants)
            width = len(names)
            while True:
                chunk = list(itertools.islice(f, CHUNK_ROWS))
                if not chunk:
                    break
                lines = np.arange(lineno + 1, lineno + 1 + len(chunk), dtype=np.int64)
                lineno += len(chunk)
                block = "".join(chunk)
                if block.endswith("\n"):
                    block = block[:-1]
                if "\n\n" in block or block.startswith("\n") or not block.strip():
                    texts = block.split("\n")
                    keep = [k for k, t in enumerate(texts) if t.strip()]
                    if not keep:
                        continue
                    block = "\n".join(texts[k] for k in keep)
                    lines = lines[keep]
                acc.add(split_block(block, lines, width, path), lines, path)
    except UnicodeDecodeError as e:
        raise TraceError(f"not UTF-8 text near line {lineno + 1} (byte 0x{e.object[e.start]:02x})",
                         path, lineno + 1) from None
    return build_trace(acc, path, strict, saved)


def build_trace(acc: Columns, path: str, strict: bool, saved: dict) -> Trace:
    if not acc.line_parts:
        raise TraceError("no requests after the header", path, 2)
    lines = np.concatenate(acc.line_parts)
    cat = {n: acc.parts[n] for n in acc.names}
    n = len(lines)
    arrival = np.concatenate(cat["arrival_s"])
    flat = offsets = None
    if "prefix_blocks" in cat:
        counts = np.concatenate([c for c, _ in cat["prefix_blocks"]])
        flat = np.concatenate([f for _, f in cat["prefix_blocks"]])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = np.concatenate(cat["id"]) if "id" in cat else None
    if ids is not None and np.any(ids == ""):
        k = int(np.flatnonzero(ids == "")[0])
        raise TraceError("id: empty request id", path, int(lines[k]))
    trace = Trace(
        arrival_s=arrival,
        adapter_idx=np.concatenate(cat["adapter"]) if "adapter" in cat
        else np.full(n, -1, dtype=np.int32),
        prompt_tokens=np.concatenate(cat["prompt_tokens"]),
        output_tokens=np.concatenate(cat["output_tokens"]),
        priority=np.concatenate(cat["priority"]) if "priority" in cat else None,
        ids=ids, adapters=acc.adapters,
        tenant_idx=np.concatenate(cat["tenant"]) if "tenant" in cat else None,
        tenants=acc.tenants, prefix_flat=flat, prefix_offsets=offsets,
        prompts=np.concatenate(cat["prompt"]) if "prompt" in cat else None,
        meta=loaded_meta(saved, path, "native-csv"))
    return sort_loaded(trace, path, lines, strict)


def sort_loaded(trace: Trace, path: str, lines: np.ndarray, strict: bool) -> Trace:
    order = arrival_order(trace.arrival_s, path, lines, strict)
    if order is None:
        return trace
    out = trace.select(order)
    out.meta["transforms"] = list(trace.meta.get("transforms", []))
    return out
