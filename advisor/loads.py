"""Synthetic loads the advisor generates itself when the user gives no trace."""
from __future__ import annotations

import numpy as np

from twinbench.traces.core import Trace

# "Mind the Memory Gap" measured decode at a mean context of ~330 tokens: prompt 200 and
# outputs averaging 260 give a mean decode context of 200 + 260/2 = 330.
SATURATING_PROMPT = 200
SATURATING_OUTPUT = (180, 340)


def saturating_trace(batch: int, seed: int, *, requests_per_slot: int = 8,
                     min_requests: int = 16, prompt_tokens: int = SATURATING_PROMPT,
                     output_range: tuple[int, int] = SATURATING_OUTPUT) -> Trace:
    """Closed-loop saturating load for `max_num_seqs = batch`: every request queued at t = 0
    (vLLM `bench serve --request-rate inf`), enough of them to keep the batch full a while.
    Output lengths are spread so completions do not arrive in lock-step waves."""
    n = max(min_requests, requests_per_slot * batch)
    rng = np.random.default_rng(seed)
    return Trace(arrival_s=np.zeros(n), adapter_idx=np.full(n, -1),
                 prompt_tokens=np.full(n, prompt_tokens),
                 output_tokens=rng.integers(output_range[0], output_range[1] + 1, size=n),
                 meta={"source": f"advisor:saturating(batch={batch})", "seed": seed,
                       "format": "synthetic"})
