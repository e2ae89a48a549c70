"""The backend protocol: `async replay(trace, options, sink) -> RunInfo`.

A backend consumes the timed request stream and emits exactly one `RequestRecord` per trace
request into `sink` as each finishes (also those never sent or never finished). The real
backend dispatches on the wall clock; the twin runs in simulated time.

A backend may also define `prepare(trace, options)`: synchronous pre-run checks (server
reachable, adapters present, lengths fit) that `replay_to_file` calls before it opens the run
file, so that a user error leaves no file behind.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from twinbench.reports.records import RequestRecord
from twinbench.traces.core import Trace


class RecordSink(Protocol):
    def emit(self, record: RequestRecord) -> None: ...


@dataclass
class ReplayOptions:
    """How a trace is replayed; the same options mean the same thing for every backend."""

    warmup_requests: int = 0          # the first N requests are sent but flagged `warmup`
    duration_s: float | None = None   # stop dispatching requests that arrive after this
    drain_limit_s: float = 600.0      # after the last arrival, wait at most this long
    max_concurrency: int | None = None  # client-side cap (closed loop); None = open loop
    seed: int = 0
    token_timestamps: str = "exact"   # "exact" (arrays / segments) or "sketch"
    request_timeout_s: float = 600.0  # per request, real backend only
    quiet: bool = False               # no progress bar

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunInfo:
    """What a backend knows about itself, written into the run file."""

    backend: str
    version: str | None = None
    server_config: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Backend(Protocol):
    name: str

    def describe(self) -> dict:
        """Static facts for the run-file header (server config, profile, URL...)."""
        ...

    async def replay(self, trace: Trace, options: ReplayOptions, sink: RecordSink) -> RunInfo: ...
