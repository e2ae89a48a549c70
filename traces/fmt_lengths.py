"""Length tables without timestamps (ShareGPT-style), combined with an arrival process.

Any CSV with a prompt-length and an output-length column, e.g. sarathi-serve's
`num_prefill_tokens,num_decode_tokens,...`. Rows keep their file order; arrivals come from
`arrival` (default Poisson at 1 req/s; rescale with `rescale_rate` or `--rate`) and `seed`.
"""
from __future__ import annotations

import numpy as np

from twinbench.traces.arrivals import arrival_times
from twinbench.traces.core import Trace
from twinbench.traces.table import base_model_columns, file_meta, parse_ints, read_table
from twinbench.traces.textfile import read_lines

PROMPT_NAMES = ("num_prefill_tokens", "prompt_tokens", "input_tokens", "prompt_len",
                "input_len", "input_length", "prompt_length")
OUTPUT_NAMES = ("num_decode_tokens", "output_tokens", "output_len", "completion_tokens",
                "output_length", "generated_tokens")
KNOWN_EXTRA = ("num_total_tokens", "total_tokens", "pd_ratio")
DEFAULT_ARRIVAL = {"process": "poisson", "rate": 1.0}


def load_lengths(path: str, strict: bool = False, arrival: dict | None = None, seed: int = 0,
                 **_options) -> Trace:
    table = read_table(path, read_lines(path), {"prompt": PROMPT_NAMES, "output": OUTPUT_NAMES},
                       strict=strict, known_extra=KNOWN_EXTRA)
    lines = table.line_numbers
    prompt = parse_ints(table.columns["prompt"], "prompt length", path, lines)
    output = parse_ints(table.columns["output"], "output length", path, lines)
    spec = dict(arrival or DEFAULT_ARRIVAL)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1E9]))
    times = arrival_times(spec, rng, count=len(prompt), where="arrival")
    meta = file_meta(path, "lengths", seed=seed, arrival=spec)
    return Trace(arrival_s=times, adapter_idx=base_model_columns(len(prompt)),
                 prompt_tokens=prompt, output_tokens=output, meta=meta)
