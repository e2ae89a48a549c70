"""`ServerConfig`: the twin's server configuration, named after `vllm serve` flags (DESIGN §4).

Every command that configures a twin shares `add_server_arguments(parser)` and
`ServerConfig.from_args(args)`, so a flag means the same thing everywhere.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from twinbench.traces.errors import TwinbenchError

SUPPORTED_VERSIONS = ("0.32", "0.33", "0.8")


class ConfigError(TwinbenchError):
    """A server flag value the twin (or vLLM) would refuse; the message names the flag."""


@dataclass(frozen=True)
class VersionRules:
    """Scheduler behaviours that changed between vLLM releases (see docs/twin.md)."""

    # 0.32: the LoRA gate counts this step's scheduled running requests; 0.33 counts all running.
    lora_gate_counts_all_running: bool
    # 0.32/0.33: `scheduler_reserve_full_isl=True`, the whole sequence must fit before admission;
    # 0.8.x only checked the first chunk.
    full_prompt_kv_check: bool
    # 0.32/0.33: long_prefill_token_threshold is not applied when only one request is eligible.
    long_prefill_cap_only_if_contended: bool


def rules_for(version: str) -> VersionRules:
    if version == "0.8":
        return VersionRules(False, False, False)
    if version == "0.33":
        return VersionRules(True, True, True)
    return VersionRules(False, True, True)


@dataclass(frozen=True)
class ServerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    max_model_len: int | None = None        # None: the profile's model limit
    block_size: int = 16
    num_gpu_blocks: int | None = None       # None: derived from the profile's memory facts
    enable_prefix_caching: bool = True      # only matters for requests carrying prefix_blocks
    enable_lora: bool = True
    max_loras: int = 1
    max_cpu_loras: int | None = None        # None: = max_loras (vLLM's default)
    max_lora_rank: int = 16
    scheduling_policy: str = "fcfs"
    vllm_version: str = "0.32"
    async_scheduling: bool = False
    gpu_memory_utilization: float | None = None  # None: the profile's value

    @property
    def rules(self) -> VersionRules:
        return rules_for(self.vllm_version)

    @property
    def cpu_lora_slots(self) -> int:
        return self.max_cpu_loras if self.max_cpu_loras is not None else self.max_loras

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ServerConfig":
        names = {f.name for f in fields(ServerConfig)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown server config key(s): {', '.join(unknown)}")
        return ServerConfig(**d)

    def with_(self, **changes: Any) -> "ServerConfig":
        return replace(self, **changes)

    def validate(self, max_model_len: int) -> None:
        """Refuse what vLLM 0.32 refuses at startup (`SchedulerConfig.verify_max_model_len`)."""
        def bad(flag: str, msg: str) -> ConfigError:
            return ConfigError(f"--{flag.replace('_', '-')}: {msg}")

        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_loras",
                     "max_lora_rank"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise bad("max_cpu_loras", f"({self.max_cpu_loras}) must be >= --max-loras "
                      f"({self.max_loras})")
        if self.max_num_batched_tokens < max_model_len and not self.enable_chunked_prefill:
            raise bad("max_num_batched_tokens", f"({self.max_num_batched_tokens}) is smaller "
                      f"than max_model_len ({max_model_len}) with chunked prefill disabled")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise bad("max_num_batched_tokens", f"({self.max_num_batched_tokens}) must be >= "
                      f"--max-num-seqs ({self.max_num_seqs})")
        if self.long_prefill_token_threshold < 0 or self.long_prefill_token_threshold > max_model_len:
            raise bad("long_prefill_token_threshold", f"must be in 0..max_model_len ({max_model_len})")
        if self.scheduling_policy != "fcfs":
            raise bad("scheduling_policy", "only 'fcfs' is modelled by the twin")
        if self.vllm_version not in SUPPORTED_VERSIONS:
            raise bad("vllm_version", f"must be one of {', '.join(SUPPORTED_VERSIONS)}")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks < 2:
            raise bad("num_gpu_blocks", "must be >= 2 (block 0 is reserved)")

    @staticmethod
    def from_args(args: argparse.Namespace) -> "ServerConfig":
        values = {}
        for f in fields(ServerConfig):
            if hasattr(args, f.name) and getattr(args, f.name) is not None:
                values[f.name] = getattr(args, f.name)
        return ServerConfig(**values)


def add_server_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The `vllm serve` flags the twin understands (defaults: `ServerConfig`).

    Flags in `skip` (or already defined by the parser, e.g. the trace arguments' own
    `--max-model-len`) are left out; `ServerConfig.from_args` reads the shared value.
    """
    group = parser.add_argument_group("server (vllm serve flags)")
    d = ServerConfig()

    class _Group:
        def add_argument(self, *names, **kw):
            if any(n in skip or n in parser._option_string_actions for n in names):
                return None
            return group.add_argument(*names, **kw)

    g = _Group()
    g.add_argument("--max-num-seqs", type=int, default=None, help=f"default {d.max_num_seqs}")
    g.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help=f"default {d.max_num_batched_tokens}")
    g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                   default=None, help="default on")
    g.add_argument("--long-prefill-token-threshold", type=int, default=None, help="default 0")
    g.add_argument("--max-model-len", type=int, default=None, help="default: the profile's")
    g.add_argument("--block-size", type=int, default=None, help="default 16")
    g.add_argument("--num-gpu-blocks", "--num-gpu-blocks-override", dest="num_gpu_blocks",
                   type=int, default=None, help="KV blocks (default: from the profile's memory)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=None, help="default on (needs requests with prefix blocks)")
    g.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=None,
                   help="default on")
    g.add_argument("--max-loras", type=int, default=None, help=f"default {d.max_loras}")
    g.add_argument("--max-cpu-loras", type=int, default=None, help="default = --max-loras")
    g.add_argument("--max-lora-rank", type=int, default=None, help=f"default {d.max_lora_rank}")
    g.add_argument("--scheduling-policy", choices=["fcfs"], default=None)
    g.add_argument("--vllm-version", choices=list(SUPPORTED_VERSIONS), default=None,
                   help="scheduler rule set to mirror (default 0.32)")
    g.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU default in vLLM; the twin models synchronous steps (docs/twin.md)")
    g.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="default: the profile's")
