"""Adapter assignment for traces that carry none (no public trace has LoRA ids).

Schemes, as published multi-LoRA work uses them: `uniform` (vLLM bench), `round-robin`
(dLoRA), `zipf:S` (S-LoRA, Punica's zipf:1.5; adapter 0 most popular), `weights` (explicit
shares), `tenant` (one adapter per tenant/client, e.g. BurstGPT models or ServeGen clients).
Names are `lora-0 .. lora-(N-1)` (tenant: the tenant's name); ranks cycle through `ranks`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from twinbench.traces.core import Adapter, Trace, TraceError

SCHEMES = ("uniform", "round-robin", "zipf:S", "weights", "tenant")


def zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


def catalog(names: Sequence[str], ranks: Sequence[int]) -> list[Adapter]:
    ranks = list(ranks) or [16]
    return [Adapter(name, int(ranks[k % len(ranks)])) for k, name in enumerate(names)]


def draw(n_requests: int, scheme: str, n_adapters: int, rng: np.random.Generator,
         weights: Sequence[float] | None = None) -> np.ndarray:
    """Adapter index per request for the index-based schemes."""
    if scheme == "uniform":
        return rng.integers(0, n_adapters, n_requests)
    if scheme == "round-robin":
        return np.arange(n_requests) % n_adapters
    if scheme.startswith("zipf"):
        _, _, s = scheme.partition(":")
        try:
            exponent = float(s or 1.0)
        except ValueError:
            raise TraceError(f"adapter scheme {scheme!r}: expected zipf:S with a number S") \
                from None
        if not exponent >= 0:
            raise TraceError(f"adapter scheme {scheme!r}: S must be >= 0")
        return rng.choice(n_adapters, n_requests, p=zipf_weights(n_adapters, exponent))
    if scheme == "weights":
        if weights is None or len(weights) != n_adapters:
            raise TraceError(f"adapter scheme 'weights' needs {n_adapters} weights")
        p = np.asarray(weights, dtype=np.float64)
        if np.any(p < 0) or not p.sum() > 0 or not np.all(np.isfinite(p)):
            raise TraceError("adapter weights must be >= 0 with a positive sum")
        return rng.choice(n_adapters, n_requests, p=p / p.sum())
    raise TraceError(f"unknown adapter scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def assign_adapters(trace: Trace, scheme: str, n_adapters: int | None, seed: int = 0,
                    ranks: Sequence[int] = (8, 16, 32),
                    weights: Sequence[float] | None = None) -> Trace:
    """A copy of `trace` whose requests are spread over a new adapter catalog.

    `tenant`: one adapter per tenant; with `n_adapters` only the busiest N tenants get one
    and the rest use the base model.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xADA]))
    label = f"assign_adapters({scheme}, {n_adapters}, seed={seed})"
    if scheme == "tenant":
        if trace.tenant_idx is None or not trace.tenants:
            raise TraceError("adapter scheme 'tenant' needs a trace with tenants "
                             "(BurstGPT models, ServeGen clients, merged traces)")
        counts = np.bincount(trace.tenant_idx[trace.tenant_idx >= 0],
                             minlength=len(trace.tenants))
        order = np.argsort(-counts, kind="stable")  # busiest first, ties by tenant order
        if n_adapters:
            order = order[:n_adapters]
        mapping = np.full(len(trace.tenants) + 1, -1, dtype=np.int32)  # slot -1 = no tenant
        mapping[order] = np.arange(len(order), dtype=np.int32)
        idx = mapping[trace.tenant_idx]
        adapters = catalog([trace.tenants[k] for k in order], ranks)
    else:
        if not n_adapters or n_adapters < 1:
            raise TraceError(f"adapter scheme {scheme!r} needs a number of adapters >= 1")
        idx = draw(len(trace), scheme, n_adapters, rng, weights).astype(np.int32)
        adapters = catalog([f"lora-{k}" for k in range(n_adapters)], ranks)
    out = trace.with_columns(transform=label, adapter_idx=idx, adapters=adapters)
    out.meta["adapter_seed"] = seed
    return out


def parse_adapter_spec(spec: str) -> tuple[str, int | None, list[float] | None]:
    """`--adapters` values: `zipf:1.0:32`, `uniform:8`, `round-robin:4`, `tenant`,
    `tenant:10`, `weights:0.5,0.3,0.2` -> (scheme, n_adapters, weights)."""
    from twinbench.traces.errors import TwinbenchError

    parts = spec.split(":")
    kind = parts[0]
    try:
        if kind == "zipf" and len(parts) == 3:
            float(parts[1])
            return f"zipf:{parts[1]}", int(parts[2]), None
        if kind in ("uniform", "round-robin") and len(parts) == 2:
            return kind, int(parts[1]), None
        if kind == "tenant" and len(parts) <= 2:
            return "tenant", int(parts[1]) if len(parts) == 2 else None, None
        if kind == "weights" and len(parts) == 2:
            w = [float(x) for x in parts[1].split(",")]
            return "weights", len(w), w
    except ValueError:
        pass
    raise TwinbenchError(f"--adapters {spec!r}: expected zipf:S:N, uniform:N, round-robin:N, "
                         "tenant[:N] or weights:W1,W2,...")
