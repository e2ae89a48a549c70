"""A 2-minute multi-adapter slice of the Azure conversation trace, replayed against the real vLLM
CPU server by twinbench's real backend and by vLLM's own `vllm bench serve`; prints both.

    python bench/real_vs_vllm_bench.py [--start 60 --minutes 2 --fraction 0.2 ...] [--out DIR]

The slice (bundled `azure_conv_2023_first600s.csv`, window [start, start + minutes)) is rescaled
to the tiny model's capacity: a seeded subsample keeps `--fraction` of the requests (the arrival
pattern, bursts included, keeps its shape and the 2-minute span), prompt and output lengths are
multiplied by `--prompt-scale` / `--output-scale`, then clipped to `max_model_len`. Adapters
a0..a3 are assigned round-robin in arrival order — exactly what `vllm bench serve
--lora-assignment round-robin` does — so both clients send the same requests (lengths, adapter,
time) to the same server (`--max-loras 2`). vLLM's client replays the same trace through its
`timed_trace` dataset (JSONL of timestamp / input_length / output_length / hash_ids).

Both follow vLLM's metric definitions (TTFT from send, ITL between token-bearing chunks, TPOT
per request, duration from the run start), so their numbers compare directly; the two runs are
separate runs on one server, on 2 shared cores: expect run-to-run noise of 20-30 %.
Writes the twinbench run file, its report, the trace and vLLM's result JSON to `--out`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

from twinbench.backends.base import ReplayOptions
from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
from twinbench.backends.vllm_cpu import VLLMServerFlags, ensure_env, tiny_server
from twinbench.replay.run import replay_to_file
from twinbench.reports.metrics import summarize
from twinbench.reports.runfile import read_run
from twinbench.traces import io, transforms as tf
from twinbench.traces.core import Adapter, Trace

ADAPTERS = ["a0", "a1", "a2", "a3"]
HASH_BLOCK = 16  # vLLM timed_trace expands one hash id into 16 prompt tokens
COMPARED = ["request_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms",
            "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "mean_itl_ms", "median_itl_ms",
            "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "duration"]
# the version fix the vllm-cpu package needs to run its CLI (docs/real-server.md)
VLLM_CLI = """
import importlib.metadata as md, sys
_version = md.version
md.version = lambda name: "0.32.0+cpu" if name == "vllm" else _version(name)
if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main
    sys.argv = ["vllm", *sys.argv[1:]]
    main()
"""


def azure_slice(start_s: float, minutes: float, fraction: float, prompt_scale: float,
                output_scale: float, max_model_len: int, seed: int) -> Trace:
    path = resources.files("twinbench.traces") / "data" / "azure_conv_2023_first600s.csv"
    trace = io.load(str(path))
    trace = tf.window(trace, start_s, start_s + 60.0 * minutes)
    trace = tf.subsample(trace, fraction, seed=seed)
    trace = tf.shift_to_zero(trace)
    scale = trace.with_columns(
        transform=f"scale_lengths({prompt_scale:g}, {output_scale:g})",
        prompt_tokens=np.maximum(1, np.rint(trace.prompt_tokens * prompt_scale)).astype(np.int32),
        output_tokens=np.maximum(1, np.rint(trace.output_tokens * output_scale)).astype(np.int32))
    assigned = scale.with_columns(transform="adapters_round_robin(a0..a3)",
                                  adapter_idx=(np.arange(len(scale)) % 4).astype(np.int32),
                                  adapters=[Adapter(a, rank=16) for a in ADAPTERS])
    return tf.clip_lengths(assigned, max_model_len)


def write_timed_trace(trace: Trace, path: Path) -> None:
    """vLLM's timed_trace JSONL; unique hash ids per request (no shared prefixes)."""
    with open(path, "w") as f:
        for i in range(len(trace)):
            n = int(trace.prompt_tokens[i])
            hashes = [i * 100_000 + k for k in range(math.ceil(n / HASH_BLOCK))]
            f.write(json.dumps({"timestamp": float(trace.arrival_s[i]), "input_length": n,
                                "output_length": int(trace.output_tokens[i]),
                                "hash_ids": hashes}) + "\n")


def run_vllm_bench(python: Path, base_url: str, tokenizer: Path, trace_path: Path,
                   n: int, out_dir: Path) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix="_vllm_cli.py", delete=False) as f:
        f.write(VLLM_CLI)
    cmd = [str(python), f.name, "bench", "serve", "--backend", "vllm", "--base-url", base_url,
           "--endpoint", "/v1/completions", "--model", "tiny", "--tokenizer", str(tokenizer),
           "--dataset-name", "timed_trace", "--dataset-path", str(trace_path),
           "--num-prompts", str(n), "--lora-modules", *ADAPTERS,
           "--lora-assignment", "round-robin", "--ignore-eos", "--temperature", "0",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
           "--save-result", "--save-detailed", "--result-dir", str(out_dir),
           "--result-filename", "vllm_bench.json"]
    log = out_dir / "vllm_bench.log"
    with open(log, "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                              env=dict(os.environ, HF_HUB_OFFLINE="1",
                                       TRANSFORMERS_OFFLINE="1")).returncode
    if code != 0:
        sys.exit(f"vllm bench serve failed (exit {code}); see {log}")
    return json.loads((out_dir / "vllm_bench.json").read_text())


def smape(a: float, b: float) -> float:
    return 0.0 if a == b == 0 else 100.0 * abs(a - b) / ((abs(a) + abs(b)) / 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", type=float, default=60.0, help="slice start in the trace (s)")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--fraction", type=float, default=0.1, help="share of requests kept")
    p.add_argument("--prompt-scale", type=float, default=0.125)
    p.add_argument("--output-scale", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for the results")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="real_vs_vllm_"))
    out.mkdir(parents=True, exist_ok=True)
    flags = VLLMServerFlags()
    trace = azure_slice(args.start, args.minutes, args.fraction, args.prompt_scale,
                        args.output_scale, flags.max_model_len, args.seed)
    io.save(trace, str(out / "trace.jsonl"))
    write_timed_trace(trace, out / "timed_trace.jsonl")
    print(f"trace: {len(trace)} requests over {trace.duration_s:.1f} s "
          f"({len(trace) / max(trace.duration_s, 1e-9):.2f} req/s), prompt p50 "
          f"{np.median(trace.prompt_tokens):.0f}, output p50 {np.median(trace.output_tokens):.0f},"
          f" adapters {ADAPTERS} round-robin; results in {out}", flush=True)

    python = ensure_env()
    server = tiny_server(flags=flags, log_path=out / "server.log")
    t0 = time.monotonic()
    with server:
        print(f"server ready in {time.monotonic() - t0:.0f} s at {server.base_url}: "
              f"{json.dumps(server.server_config())}", flush=True)
        backend = OpenAIBackend(OpenAIConfig(base_url=server.base_url, scrape_interval_s=1.0))
        run_path = out / "twinbench_run.jsonl"
        _, status, _ = replay_to_file(trace, backend, ReplayOptions(quiet=True), str(run_path),
                                      force=True)
        if status != "complete":
            sys.exit(f"the twinbench run was {status}; not running vllm bench serve")
        print(f"twinbench run done ({run_path}); now vllm bench serve", flush=True)
        ours = summarize(read_run(run_path))
        (out / "twinbench_summary.json").write_text(json.dumps(ours.to_dict(), indent=1,
                                                               default=str))
        theirs = run_vllm_bench(python, server.base_url, server.model_root / "base",
                                out / "timed_trace.jsonl", len(trace), out)

    print(f"\n{'metric':<22}{'twinbench':>12}{'vllm bench':>12}{'SMAPE %':>9}")
    for key in COMPARED:
        a, b = ours.get(key), theirs.get(key)
        if a is None or b is None:
            print(f"{key:<22}{'n/a' if a is None else f'{a:.2f}':>12}"
                  f"{'n/a' if b is None else f'{b:.2f}':>12}")
            continue
        print(f"{key:<22}{a:>12.2f}{b:>12.2f}{smape(a, b):>9.1f}")
    print(f"{'completed / failed':<22}{ours.get('completed', 'n/a')!s:>12}"
          f"{str(theirs.get('completed')) + ' / ' + str(theirs.get('failed')):>12}")
    print("\ntwinbench per adapter (vllm bench has no per-adapter figures):")
    print(f"{'adapter':<9}{'n':>5}{'mean TTFT ms':>14}{'p99 TTFT ms':>13}{'mean ITL ms':>13}")
    for name, s in ours.per_adapter.items():
        print(f"{name:<9}{s.get('completed', 0)!s:>5}{s.get('mean_ttft_ms') or 0:>14.1f}"
              f"{s.get('p99_ttft_ms') or 0:>13.1f}{s.get('mean_itl_ms') or 0:>13.1f}")
    if ours.starvation is not None:
        st = ours.starvation
        print(f"starvation: {'yes' if st.run_starving else 'no'} ({st.run_reason}); starving "
              f"adapters: {', '.join(st.starving_adapters) or 'none'}")
    definitions_check(out / "vllm_bench.json")


def definitions_check(result_path: Path) -> None:
    """vLLM's own per-request arrays summarised by twinbench's metrics code: the numbers must
    match vLLM's summary (same data, two implementations of the same definitions)."""
    from twinbench.reports.vllm_io import read_vllm_result

    theirs = json.loads(result_path.read_text())
    recomputed = summarize(read_vllm_result(str(result_path)), time_series=False)
    worst = 0.0
    print("\nvllm bench's own requests, summarised by twinbench vs vLLM's numbers:")
    for key in COMPARED:
        a, b = recomputed.get(key), theirs.get(key)
        if a is None or b is None:
            continue
        worst = max(worst, smape(a, b))
        print(f"{key:<22}{a:>14.4f}{b:>14.4f}{smape(a, b):>9.4f}")
    print(f"largest SMAPE: {worst:.4f} %")


if __name__ == "__main__":
    main()
