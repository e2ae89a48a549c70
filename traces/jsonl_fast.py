"""Fast path for native JSONL: parse many lines per `json.loads` call, check columns at once.

It accepts only plainly valid files (what `save` writes, or tidy hand-written ones). On the
first thing that is not plain it raises `NotPlain`, and the line-by-line loader runs instead:
that one names the exact line of any error, so this path never has to.
"""
from __future__ import annotations

import itertools
import json

import numpy as np

from twinbench.traces.core import Adapter
from twinbench.traces.native_header import MAGIC, parse_header

CHUNK_LINES = 50_000
FIELDS = {"id", "arrival_s", "adapter", "prompt_tokens", "output_tokens", "tenant", "priority",
          "prefix_blocks", "prompt"}
INT32_MAX = 2**31 - 1


class NotPlain(Exception):
    """The file needs the careful loader (an error, a warning, or an unusual spelling)."""


def types_of(values) -> set:
    return set(map(type, values))


def ints(values: list, minimum: int | None) -> np.ndarray:
    if not types_of(values) <= {int}:
        raise NotPlain
    try:
        arr = np.array(values, dtype=np.int64)
    except OverflowError:
        raise NotPlain from None
    if (minimum is not None and len(arr) and arr.min() < minimum) or \
            (len(arr) and np.abs(arr).max() > INT32_MAX):
        raise NotPlain
    return arr.astype(np.int32)


class Catalog:
    """Names in order of first appearance, as the careful loader builds them."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.index[None] = -1

    def lookup(self, values: list) -> np.ndarray:
        if not types_of(values) <= {str, type(None)}:
            raise NotPlain
        for name in dict.fromkeys(values):
            if name not in self.index:
                if name == "":
                    raise NotPlain
                self.index[name] = len(self.names)
                self.names.append(name)
        return np.fromiter(map(self.index.__getitem__, values), dtype=np.int32,
                           count=len(values))


def load_columns(path: str) -> dict:
    """Columns, catalogs and saved meta of a plain native JSONL file, or raise `NotPlain`."""
    with open(path, encoding="utf-8-sig") as f:
        first = f.readline()
        try:
            head = json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NotPlain from None
        pending: list[str] = []
        adapters: list[Adapter] = []
        tenants: list[str] = []
        saved: dict = {}
        has_header = isinstance(head, dict) and MAGIC in head
        if has_header:
            adapters, tenants, saved = parse_header(head, path, 1)  # errors are final
        else:
            pending = [first]
        adapter_cat = Catalog([a.name for a in adapters])
        tenant_cat = Catalog(tenants)
        cols: dict[str, list] = {k: [] for k in ("arrival_s", "adapter", "prompt_tokens",
                                                 "output_tokens", "priority", "id", "tenant",
                                                 "prefix_counts", "prefix_flat", "prompt")}
        seen: set[str] = set()
        n = 0
        while True:
            chunk = pending + list(itertools.islice(f, CHUNK_LINES))
            pending = []
            if not chunk:
                break
            try:
                recs = json.loads("[" + ",".join(chunk) + "]")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise NotPlain from None
            if not types_of(recs) <= {dict}:
                raise NotPlain
            keys = set().union(*map(dict.keys, recs)) if recs else set()
            if not keys <= FIELDS:
                raise NotPlain
            seen |= keys
            try:
                arrival = [r["arrival_s"] for r in recs]
                prompt = [r["prompt_tokens"] for r in recs]
                output = [r["output_tokens"] for r in recs]
            except KeyError:
                raise NotPlain from None
            if not types_of(arrival) <= {float, int}:
                raise NotPlain
            t = np.array(arrival, dtype=np.float64)
            if not np.all(np.isfinite(t)):
                raise NotPlain
            cols["arrival_s"].append(t)
            cols["prompt_tokens"].append(ints(prompt, 1))
            cols["output_tokens"].append(ints(output, 1))
            cols["priority"].append(ints([r.get("priority", 0) for r in recs], None))
            cols["adapter"].append(adapter_cat.lookup([r.get("adapter") for r in recs]))
            if "id" in keys:
                ids = [r.get("id") for r in recs]
                if not types_of(ids) <= {str} or "" in ids:
                    raise NotPlain
                cols["id"].append(np.array(ids, dtype=object))
            elif cols["id"]:
                raise NotPlain
            cols["tenant"].append(tenant_cat.lookup([r.get("tenant") for r in recs]))
            blocks = [r.get("prefix_blocks") or () for r in recs]
            if not types_of(blocks) <= {list, tuple}:
                raise NotPlain
            flat = list(itertools.chain.from_iterable(blocks))
            if not types_of(flat) <= {int}:
                raise NotPlain
            try:
                cols["prefix_flat"].append(np.array(flat, dtype=np.int64))
            except OverflowError:
                raise NotPlain from None
            cols["prefix_counts"].append(np.fromiter(map(len, blocks), dtype=np.int64,
                                                     count=len(blocks)))
            prompts = [r.get("prompt") for r in recs]
            if not types_of(prompts) <= {str, type(None)}:
                raise NotPlain
            cols["prompt"].append(np.array(prompts, dtype=object))
            n += len(recs)
    if n == 0 or ("id" in seen and sum(map(len, cols["id"])) != n):
        raise NotPlain
    return {"cols": cols, "seen": seen, "adapters": adapter_cat.names, "catalog": adapters,
            "tenants": tenant_cat.names, "saved": saved, "n": n, "header": has_header}
