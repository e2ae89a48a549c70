"""`Request` and the columnar `Trace` (DESIGN §2).

A trace holds one NumPy column per field so that a million requests load in seconds and
take little memory; iterating it yields `Request` objects for code that wants them.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from twinbench.traces.errors import TwinbenchError

BASE_ADAPTER = -1  # adapter index meaning "the base model, no adapter"


class TraceError(TwinbenchError):
    """A problem with a trace file or trace arguments: names the file and line when known."""


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter in a trace's catalog."""

    name: str
    rank: int = 16
    path: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "rank": self.rank, "path": self.path}

    @staticmethod
    def from_dict(d: dict) -> "Adapter":
        return Adapter(name=str(d["name"]), rank=int(d.get("rank", 16)), path=d.get("path"))


@dataclass
class Request:
    id: str
    arrival_s: float
    adapter: str | None
    prompt_tokens: int
    output_tokens: int
    prefix_blocks: tuple[int, ...] | None = None
    prompt: str | None = None
    tenant: str | None = None
    priority: int = 0


@dataclass
class Trace:
    """Columnar request stream, sorted by arrival time.

    Columns (all length n): `arrival_s` float64, `adapter_idx` int32 (index into `adapters`,
    -1 = base model), `prompt_tokens` int32, `output_tokens` int32, `priority` int32.
    Optional: `ids` (str array; default ids are the row numbers), `tenant_idx` (index into
    `tenants`), prefix blocks as a ragged array (`prefix_flat` int64 + `prefix_offsets`
    int64, length n+1), `prompts` (object array of str).
    """

    arrival_s: np.ndarray
    adapter_idx: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    adapters: list[Adapter] = field(default_factory=list)
    priority: np.ndarray | None = None
    ids: np.ndarray | None = None
    tenant_idx: np.ndarray | None = None
    tenants: list[str] = field(default_factory=list)
    prefix_flat: np.ndarray | None = None
    prefix_offsets: np.ndarray | None = None
    prompts: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arrival_s = np.ascontiguousarray(self.arrival_s, dtype=np.float64)
        n = len(self.arrival_s)
        self.adapter_idx = np.ascontiguousarray(self.adapter_idx, dtype=np.int32)
        self.prompt_tokens = np.ascontiguousarray(self.prompt_tokens, dtype=np.int32)
        self.output_tokens = np.ascontiguousarray(self.output_tokens, dtype=np.int32)
        if self.priority is None:
            self.priority = np.zeros(n, dtype=np.int32)
        for name in ("adapter_idx", "prompt_tokens", "output_tokens", "priority"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name} has {len(getattr(self, name))} rows, expected {n}")
        self.meta.setdefault("transforms", [])

    # ---- construction -------------------------------------------------------------------
    @staticmethod
    def from_requests(requests: Sequence[Request], adapters: Sequence[Adapter] | None = None,
                      meta: dict | None = None) -> "Trace":
        """Build a trace from `Request` objects (slow path; loaders build columns directly)."""
        catalog = list(adapters or [])
        index = {a.name: i for i, a in enumerate(catalog)}
        tenants: list[str] = []
        tenant_index: dict[str, int] = {}
        adapter_idx, tenant_idx, flat, offsets = [], [], [], [0]
        any_prefix = any(r.prefix_blocks for r in requests)
        any_tenant = any(r.tenant is not None for r in requests)
        any_prompt = any(r.prompt is not None for r in requests)
        for r in requests:
            if r.adapter is None:
                adapter_idx.append(BASE_ADAPTER)
            else:
                if r.adapter not in index:
                    index[r.adapter] = len(catalog)
                    catalog.append(Adapter(r.adapter))
                adapter_idx.append(index[r.adapter])
            if any_tenant:
                if r.tenant is None:
                    tenant_idx.append(-1)
                else:
                    tenant_idx.append(tenant_index.setdefault(r.tenant, len(tenant_index)))
                    if len(tenants) < len(tenant_index):
                        tenants.append(r.tenant)
            if any_prefix:
                flat.extend(r.prefix_blocks or ())
                offsets.append(len(flat))
        return Trace(
            arrival_s=np.array([r.arrival_s for r in requests], dtype=np.float64),
            adapter_idx=np.array(adapter_idx, dtype=np.int32),
            prompt_tokens=np.array([r.prompt_tokens for r in requests], dtype=np.int32),
            output_tokens=np.array([r.output_tokens for r in requests], dtype=np.int32),
            priority=np.array([r.priority for r in requests], dtype=np.int32),
            ids=np.array([r.id for r in requests], dtype=object),
            adapters=catalog,
            tenant_idx=np.array(tenant_idx, dtype=np.int32) if any_tenant else None,
            tenants=tenants,
            prefix_flat=np.array(flat, dtype=np.int64) if any_prefix else None,
            prefix_offsets=np.array(offsets, dtype=np.int64) if any_prefix else None,
            prompts=np.array([r.prompt for r in requests], dtype=object) if any_prompt else None,
            meta=dict(meta or {}),
        )

    # ---- access -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.arrival_s)

    def request_id(self, i: int) -> str:
        return str(self.ids[i]) if self.ids is not None else str(i)

    def adapter_name(self, i: int) -> str | None:
        k = int(self.adapter_idx[i])
        return None if k < 0 else self.adapters[k].name

    def adapter_names(self) -> np.ndarray:
        """Per-request adapter name as an object array (None = base)."""
        table = np.array([a.name for a in self.adapters] + [None], dtype=object)
        return table[self.adapter_idx]  # -1 picks the trailing None

    def prefix_blocks(self, i: int) -> tuple[int, ...] | None:
        if self.prefix_flat is None:
            return None
        a, b = self.prefix_offsets[i], self.prefix_offsets[i + 1]
        return tuple(int(x) for x in self.prefix_flat[a:b])

    def __getitem__(self, i: int) -> Request:
        i = int(i)
        if i < 0:
            i += len(self)
        tenant = None
        if self.tenant_idx is not None and self.tenant_idx[i] >= 0:
            tenant = self.tenants[self.tenant_idx[i]]
        return Request(
            id=self.request_id(i),
            arrival_s=float(self.arrival_s[i]),
            adapter=self.adapter_name(i),
            prompt_tokens=int(self.prompt_tokens[i]),
            output_tokens=int(self.output_tokens[i]),
            prefix_blocks=self.prefix_blocks(i),
            prompt=None if self.prompts is None else self.prompts[i],
            tenant=tenant,
            priority=int(self.priority[i]),
        )

    def __iter__(self) -> Iterator[Request]:
        for i in range(len(self)):
            yield self[i]

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    # ---- selection ----------------------------------------------------------------------
    def select(self, mask_or_index: np.ndarray, transform: str | None = None) -> "Trace":
        """A new trace holding the chosen rows (boolean mask or sorted index array)."""
        idx = np.flatnonzero(mask_or_index) if np.asarray(mask_or_index).dtype == bool \
            else np.asarray(mask_or_index, dtype=np.int64)
        flat = offsets = None
        if self.prefix_flat is not None:
            starts, ends = self.prefix_offsets[idx], self.prefix_offsets[idx + 1]
            lens = ends - starts
            offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            take = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1])
            flat = self.prefix_flat[take]
        meta = dict(self.meta)
        meta["transforms"] = list(self.meta.get("transforms", [])) + ([transform] if transform else [])
        return dataclasses.replace(
            self,
            arrival_s=self.arrival_s[idx], adapter_idx=self.adapter_idx[idx],
            prompt_tokens=self.prompt_tokens[idx], output_tokens=self.output_tokens[idx],
            priority=self.priority[idx],
            ids=None if self.ids is None else self.ids[idx],
            tenant_idx=None if self.tenant_idx is None else self.tenant_idx[idx],
            prefix_flat=flat, prefix_offsets=offsets,
            prompts=None if self.prompts is None else self.prompts[idx],
            meta=meta, adapters=list(self.adapters), tenants=list(self.tenants),
        )

    def with_columns(self, transform: str | None = None, **columns: Any) -> "Trace":
        """A copy with some columns replaced, recording the transform name in `meta`."""
        meta = dict(self.meta)
        meta["transforms"] = list(self.meta.get("transforms", [])) + ([transform] if transform else [])
        return dataclasses.replace(self, meta=meta, **columns)

    def identity(self) -> dict:
        """What a run file records about the trace it replayed."""
        return {
            "source": self.meta.get("source"), "format": self.meta.get("format"),
            "sha256": self.meta.get("sha256"), "transforms": self.meta.get("transforms", []),
            "seed": self.meta.get("seed"), "requests": len(self),
            "adapters": [a.to_dict() for a in self.adapters],
        }


def sha256_of_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
