"""What is sent for each trace row: model name, clipped lengths, prompt, request body.

Built once before the run (and pickled to worker processes). Clipping rule for a server
whose `max_model_len` is M: the prompt keeps at most M-1 tokens, then the output at most what
is left (prompt + output <= M); with `over_length="refuse"` such rows are not sent at all and
are recorded as errors. Both are counted in the run's info.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from twinbench.backends.prompts import PromptBuilder
from twinbench.traces.core import Trace


@dataclass
class RequestPlan:
    trace: Trace
    base_model: str
    chat: bool
    prompt_mode: str                     # "ids" | "text"
    builder: PromptBuilder
    prompt_len: np.ndarray               # int32 per row, after clipping
    output_len: np.ndarray               # int32 per row, after clipping
    refused: np.ndarray                  # bool per row
    clipped: np.ndarray                  # bool per row
    max_model_len: int | None = None
    texts: dict[int, str] = field(default_factory=dict)   # text prompts, fitted in advance
    text_counts: dict[int, int] = field(default_factory=dict)  # server's count per text
    extra_body: dict = field(default_factory=dict)        # user fields merged into each body
    twin_clock: bool = False                              # send each row's arrival time

    @staticmethod
    def build(trace: Trace, base_model: str, chat: bool, prompt_mode: str, seed: int,
              max_model_len: int | None, over_length: str = "clip",
              extra_body: dict | None = None, twin_clock: bool = False) -> "RequestPlan":
        p = trace.prompt_tokens.astype(np.int64)
        o = trace.output_tokens.astype(np.int64)
        refused = np.zeros(len(trace), dtype=bool)
        clipped = np.zeros(len(trace), dtype=bool)
        if max_model_len:
            over = p + o > max_model_len
            if over_length == "refuse":
                refused = over
            else:
                clipped = over
                p = np.minimum(p, max_model_len - 1)
                o = np.minimum(o, max_model_len - p)
        return RequestPlan(trace=trace, base_model=base_model, chat=chat,
                           prompt_mode="text" if chat else prompt_mode,
                           builder=PromptBuilder.for_trace(trace, seed),
                           prompt_len=p.astype(np.int32), output_len=o.astype(np.int32),
                           refused=refused, clipped=clipped, max_model_len=max_model_len,
                           extra_body=dict(extra_body or {}), twin_clock=twin_clock)

    def model_of(self, row: int) -> str:
        return self.trace.adapter_name(row) or self.base_model

    def prompt_of(self, row: int) -> list[int] | str:
        if self.prompt_mode == "ids":
            return self.builder.token_ids(self.trace, row, int(self.prompt_len[row]))
        text = self.texts.get(row)
        if text is None:  # not fitted (no /tokenize): one word per token as a first guess
            text = " ".join(self.builder.words(self.trace, row, int(self.prompt_len[row])))
        return text

    def body_of(self, row: int) -> bytes:
        n_out = int(self.output_len[row])
        body: dict = {"model": self.model_of(row), "stream": True,
                      "stream_options": {"include_usage": True},
                      "temperature": 0.0, "ignore_eos": True, "min_tokens": n_out}
        if self.chat:
            body["messages"] = [{"role": "user", "content": self.prompt_of(row)}]
            body["max_completion_tokens"] = n_out
            body["max_tokens"] = n_out  # servers that predate max_completion_tokens
        else:
            body["max_tokens"] = n_out
            body["prompt"] = self.prompt_of(row)
        if self.extra_body:
            body.update(self.extra_body)
        if self.twin_clock:
            # `twinbench serve` enters the request at this simulated arrival (docs/twin-server.md)
            body["twin_arrival_s"] = float(self.trace.arrival_s[row])
        return json.dumps(body, separators=(",", ":")).encode()

    def requested_of(self, row: int) -> int:
        return int(self.output_len[row])

    def adapters_used(self, rows: np.ndarray) -> list[str]:
        idx = np.unique(self.trace.adapter_idx[rows])
        return [self.trace.adapters[k].name for k in idx if k >= 0]
