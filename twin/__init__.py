"""The twin: a step-level simulator of a vLLM V1 engine serving LoRA adapters (docs/twin.md)."""
from __future__ import annotations


def simulate(*args, **kwargs):
    from twinbench.twin.simulation import simulate as _simulate

    return _simulate(*args, **kwargs)


def simulate_cluster(*args, **kwargs):
    from twinbench.twin.cluster import simulate_cluster as _simulate_cluster

    return _simulate_cluster(*args, **kwargs)


__all__ = ["simulate", "simulate_cluster"]
