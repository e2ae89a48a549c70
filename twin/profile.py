"""Profiles: versioned JSON files holding a served model's step-time model and memory facts.

The schema is documented in docs/profiles.md (schema_version 1). A profile is data, never
code: coefficients in milliseconds as measured or estimated, with provenance saying which is
which. `StepModel` (steptime.py) turns them into exact integer-nanosecond step durations.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from twinbench.traces.errors import TwinbenchError

SCHEMA_VERSION = 1


class ProfileError(TwinbenchError):
    """A profile file that cannot be read or does not follow the schema."""


# Keys every profile must carry, by section (docs/profiles.md lists their meaning).
_REQUIRED = {
    "model": ("name", "max_model_len"),
    "memory": ("device_bytes", "gpu_memory_utilization", "weights_bytes",
               "non_kv_reserve_bytes", "kv_bytes_per_token"),
    "step_time": ("base_ms", "per_decode_seq_ms", "per_kv_token_ms", "per_prefill_token_ms",
                  "per_prefill_attention_pair_ms", "lora_factor"),
    "scheduler": ("base_ms", "per_running_ms", "per_waiting_ms"),
    "adapter_load": ("disk_to_cpu_ms", "disk_to_cpu_per_rank_ms", "cpu_to_gpu_ms",
                     "cpu_to_gpu_per_rank_ms"),
}
_LORA_FACTOR_KEYS = ("base", "per_adapter", "per_rank_unit", "base_only_on_lora_server")


@dataclass
class Profile:
    name: str
    data: dict[str, Any]
    source: str | None = None  # file path or "builtin:NAME"
    schema_version: int = SCHEMA_VERSION
    provenance: dict[str, Any] = field(default_factory=dict)

    # ---- loading ------------------------------------------------------------------------
    @staticmethod
    def builtin_names() -> list[str]:
        folder = resources.files("twinbench.twin") / "profiles"
        return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))

    @staticmethod
    def load(name_or_path: "str | os.PathLike | Profile") -> "Profile":
        """A built-in profile by name (`llama-3.1-8b-h100`) or a profile JSON file."""
        if isinstance(name_or_path, Profile):
            return name_or_path
        text_name = os.fspath(name_or_path)
        if os.path.exists(text_name):
            try:
                with open(text_name, encoding="utf-8") as f:
                    d = json.load(f)
            except json.JSONDecodeError as e:
                raise ProfileError(f"not valid JSON: {e.msg}", text_name, e.lineno) from None
            except OSError as e:
                raise ProfileError(f"cannot read profile: {e.strerror}", text_name) from None
            return Profile.from_json(d, source=text_name)
        res = resources.files("twinbench.twin") / "profiles" / f"{text_name}.json"
        if not res.is_file():
            raise ProfileError(f"--profile {text_name}: no such file or built-in profile "
                               f"(built-in: {', '.join(Profile.builtin_names())})")
        return Profile.from_json(json.loads(res.read_text(encoding="utf-8")),
                                 source=f"builtin:{text_name}")

    @staticmethod
    def from_json(d: dict[str, Any], source: str | None = None) -> "Profile":
        where = source or "profile"
        if not isinstance(d, dict):
            raise ProfileError("a profile is a JSON object", where)
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ProfileError(f"schema_version {version!r} is not supported "
                               f"(this twinbench reads {SCHEMA_VERSION})", where)
        for section, keys in _REQUIRED.items():
            sec = d.get(section)
            if not isinstance(sec, dict):
                raise ProfileError(f"missing section {section!r}", where)
            for k in keys:
                if k not in sec:
                    raise ProfileError(f"missing key {section}.{k}", where)
        lf = d["step_time"]["lora_factor"]
        for k in _LORA_FACTOR_KEYS:
            if k not in lf:
                raise ProfileError(f"missing key step_time.lora_factor.{k}", where)
        for section in ("step_time", "scheduler", "adapter_load"):
            for k, v in d[section].items():
                if isinstance(v, (int, float)) and (v < 0 or not math.isfinite(v)):
                    raise ProfileError(f"{section}.{k} must be a finite number >= 0", where)
        jitter = d.get("step_jitter")
        if jitter is not None:
            _check_jitter(jitter, where)
        if "name" not in d:
            raise ProfileError("missing key name", where)
        return Profile(name=str(d["name"]), data=copy.deepcopy(d), source=source,
                       schema_version=version, provenance=dict(d.get("provenance", {})))

    def to_json(self) -> dict[str, Any]:
        out = copy.deepcopy(self.data)
        out["schema_version"] = self.schema_version
        out["name"] = self.name
        out["provenance"] = copy.deepcopy(self.provenance)
        return out

    def summary(self) -> dict[str, Any]:
        """What a run file records about the profile (the full JSON: it is small)."""
        d = self.to_json()
        d["source"] = self.source
        return d

    # ---- facts --------------------------------------------------------------------------
    def section(self, name: str) -> dict[str, Any]:
        return self.data[name]

    @property
    def max_model_len(self) -> int:
        return int(self.data["model"]["max_model_len"])

    @property
    def replica_bandwidth_share(self) -> float:
        return float(self.data.get("replica_bandwidth_share", 1.0))

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.data.get("defaults", {}))

    def lora_slot_bytes(self, rank: int) -> float:
        """GPU memory one LoRA slot takes at `max_lora_rank` = rank.

        Uses measured (rank, bytes) points when the profile has them (linear between and
        beyond the two nearest points), else `lora_bytes_per_slot_rank` × rank.
        """
        mem = self.data["memory"]
        points = sorted((int(r), float(b)) for r, b in mem.get("lora_slot_bytes", []))
        if len(points) >= 2:
            lo, hi = points[0], points[1]
            for a, b in zip(points, points[1:]):
                lo, hi = a, b
                if rank <= b[0]:
                    break
            slope = (hi[1] - lo[1]) / (hi[0] - lo[0])
            return max(0.0, lo[1] + slope * (rank - lo[0]))
        if len(points) == 1:
            return points[0][1] * rank / points[0][0]
        return float(mem.get("lora_bytes_per_slot_rank", 0.0)) * rank

    def kv_pool_bytes(self, max_loras: int, max_lora_rank: int, enable_lora: bool = True,
                      gpu_memory_utilization: float | None = None) -> float:
        mem = self.data["memory"]
        util = gpu_memory_utilization if gpu_memory_utilization is not None \
            else float(mem["gpu_memory_utilization"])
        pool = float(mem["device_bytes"]) * util - float(mem["weights_bytes"]) \
            - float(mem["non_kv_reserve_bytes"])
        if enable_lora:
            pool -= max_loras * self.lora_slot_bytes(max_lora_rank)
        return pool

    def kv_capacity_tokens(self, max_loras: int, max_lora_rank: int, enable_lora: bool = True,
                           gpu_memory_utilization: float | None = None) -> int:
        pool = self.kv_pool_bytes(max_loras, max_lora_rank, enable_lora, gpu_memory_utilization)
        return max(0, int(pool // float(self.data["memory"]["kv_bytes_per_token"])))

    def num_gpu_blocks(self, block_size: int, max_loras: int, max_lora_rank: int,
                       enable_lora: bool = True, gpu_memory_utilization: float | None = None
                       ) -> int:
        """KV blocks as vLLM reports them (`num_gpu_blocks`; block 0 is the reserved null block)."""
        return self.kv_capacity_tokens(max_loras, max_lora_rank, enable_lora,
                                       gpu_memory_utilization) // block_size

    # ---- derived profiles ---------------------------------------------------------------
    def with_changes(self, name: str | None = None, note: str | None = None,
                     **sections: dict[str, Any]) -> "Profile":
        """A copy with some section keys replaced (e.g. fitted coefficients)."""
        d = self.to_json()
        for sec, values in sections.items():
            if isinstance(d.get(sec), dict) and isinstance(values, dict):
                merged = d[sec]
                for k, v in values.items():
                    if isinstance(v, dict) and isinstance(merged.get(k), dict):
                        merged[k] = {**merged[k], **v}
                    else:
                        merged[k] = v
            else:
                d[sec] = values
        if name:
            d["name"] = name
        if note:
            d.setdefault("provenance", {}).setdefault("notes", []).append(note)
        return Profile.from_json(d, source=self.source)

    def for_shared_gpu(self, replicas: int) -> "Profile":
        """The profile of one of `replicas` vLLM instances sharing this GPU.

        Assumption (docs/profiles.md): each replica gets 1/N of the usable memory (weights are
        loaded once per replica), and the memory-bound step terms (base, per decode sequence,
        per KV token read) grow by 1 + share·(N−1) where share = `replica_bandwidth_share`
        (1 = replicas split the bandwidth evenly when all are busy, 0 = no contention).
        """
        if replicas <= 1:
            return self
        share = self.replica_bandwidth_share
        slow = 1.0 + share * (replicas - 1)
        st = self.data["step_time"]
        mem = self.data["memory"]
        return self.with_changes(
            name=f"{self.name}-x{replicas}",
            note=f"one of {replicas} replicas on one GPU (bandwidth share {share})",
            step_time={k: float(st[k]) * slow for k in
                       ("base_ms", "per_decode_seq_ms", "per_kv_token_ms")},
            memory={"gpu_memory_utilization": float(mem["gpu_memory_utilization"]) / replicas},
        )


def _check_jitter(jitter: Any, where: str) -> None:
    """`step_jitter`: {sigma >= 0, window_ms > 0 when sigma > 0, seed (int, optional)}."""
    if not isinstance(jitter, dict):
        raise ProfileError("step_jitter must be an object {sigma, window_ms, seed}", where)
    for k in ("sigma", "window_ms"):
        v = jitter.get(k, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or not math.isfinite(v):
            raise ProfileError(f"step_jitter.{k} must be a finite number >= 0", where)
    if jitter.get("sigma", 0.0) > 0 and not jitter.get("window_ms", 0.0) > 0:
        raise ProfileError("step_jitter.window_ms must be > 0 when sigma > 0", where)
    if jitter.get("sigma", 0.0) > 1.0:
        raise ProfileError("step_jitter.sigma above 1 (a log-normal spread of e^1) is not a "
                           "speed variation the twin models", where)
    if not isinstance(jitter.get("seed", 0), int) or isinstance(jitter.get("seed", 0), bool):
        raise ProfileError("step_jitter.seed must be an integer", where)
