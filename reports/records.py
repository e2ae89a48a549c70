"""`RequestRecord`: the one thing both backends emit per trace request (DESIGN §2).

Times are float seconds on the run clock (0 = trace origin). Token timing is kept per
token-bearing chunk, in one of two compact forms:
- exact arrays (`chunk_times` float64 s, `chunk_tokens` int32), from the real backend;
- step segments (`segments`, int64 rows `[t_first_ns, dt_ns, n_chunks, tokens_per_chunk]`),
  from the twin, whose decode steps between two events have equal length.
Under the opt-in sketch mode records carry neither, and the run file's footer holds
mergeable quantile sketches instead.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STATUSES = ("ok", "error", "timeout", "cancelled", "unfinished")


@dataclass(slots=True)  # a million records: 40 % less memory, faster to build
class RequestRecord:
    id: str
    adapter: str | None
    arrival_s: float
    prompt_tokens: int
    requested_output_tokens: int
    status: str = "unfinished"
    replica: int | None = None
    warmup: bool = False
    client_queue_s: float = 0.0
    sent_s: float | None = None
    first_token_s: float | None = None
    end_s: float | None = None
    output_tokens: int | None = None
    error: str | None = None
    chunk_times: np.ndarray | None = None
    chunk_tokens: np.ndarray | None = None
    segments: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- derived values -----------------------------------------------------------------
    @property
    def ttft_s(self) -> float | None:
        if self.first_token_s is None or self.sent_s is None:
            return None
        return self.first_token_s - self.sent_s

    @property
    def e2el_s(self) -> float | None:
        if self.end_s is None or self.sent_s is None:
            return None
        return self.end_s - self.sent_s

    def chunk_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(times in s, tokens per chunk), expanding step segments if needed."""
        if self.chunk_times is not None:
            tokens = self.chunk_tokens if self.chunk_tokens is not None else \
                np.ones(len(self.chunk_times), dtype=np.int32)
            return self.chunk_times, tokens
        if self.segments is not None and len(self.segments):
            seg = np.asarray(self.segments, dtype=np.int64)
            counts = seg[:, 2]
            k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            times_ns = np.repeat(seg[:, 0], counts) + k * np.repeat(seg[:, 1], counts)
            return times_ns / 1e9, np.repeat(seg[:, 3], counts).astype(np.int32)
        return np.empty(0), np.empty(0, dtype=np.int32)

    # ---- serialisation ------------------------------------------------------------------
    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "id": self.id, "adapter": self.adapter, "replica": self.replica,
            "warmup": self.warmup, "arrival_s": self.arrival_s,
            "client_queue_s": self.client_queue_s, "sent_s": self.sent_s,
            "first_token_s": self.first_token_s, "end_s": self.end_s,
            "prompt_tokens": self.prompt_tokens,
            "requested_output_tokens": self.requested_output_tokens,
            "output_tokens": self.output_tokens, "status": self.status, "error": self.error,
        }
        if self.chunk_times is not None:
            d["chunks"] = {
                "t": _b64(np.asarray(self.chunk_times, dtype="<f8")),
                # omitted when every chunk carried one token (the common case)
                "n": None if self.chunk_tokens is None or np.all(self.chunk_tokens == 1)
                else _b64(np.asarray(self.chunk_tokens, dtype="<i4")),
            }
        elif self.segments is not None:
            d["segments"] = np.asarray(self.segments, dtype=np.int64).tolist()
        if self.extra:
            d["extra"] = self.extra
        return d

    @staticmethod
    def from_json(d: dict) -> "RequestRecord":
        chunk_times = chunk_tokens = segments = None
        if d.get("chunks") is not None:
            chunk_times = _unb64(d["chunks"]["t"], "<f8")
            if d["chunks"].get("n") is not None:
                chunk_tokens = _unb64(d["chunks"]["n"], "<i4")
        elif d.get("segments") is not None:
            segments = np.array(d["segments"], dtype=np.int64).reshape(-1, 4)
        return RequestRecord(
            id=str(d["id"]), adapter=d.get("adapter"), replica=d.get("replica"),
            warmup=bool(d.get("warmup", False)), arrival_s=float(d["arrival_s"]),
            client_queue_s=float(d.get("client_queue_s") or 0.0), sent_s=d.get("sent_s"),
            first_token_s=d.get("first_token_s"), end_s=d.get("end_s"),
            prompt_tokens=int(d["prompt_tokens"]),
            requested_output_tokens=int(d["requested_output_tokens"]),
            output_tokens=d.get("output_tokens"), status=d.get("status", "unfinished"),
            error=d.get("error"), chunk_times=chunk_times, chunk_tokens=chunk_tokens,
            segments=segments, extra=d.get("extra") or {},
        )


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _unb64(s: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).astype(dtype[1:], copy=True)
