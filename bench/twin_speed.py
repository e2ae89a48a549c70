"""Twin speed: how much faster than real time the engine simulates (prints figures).

    python bench/twin_speed.py [--trace CSV] [--skip-step] [--skip-million] [--requests N]
                               [--repeat 7] [--jitter SIGMA:WINDOW_MS]

Cases (Azure conv trace, 19,366 requests over 1 h, Zipf(1.0) over 32 adapters with ranks
8/16/32, max_loras 8, max_lora_rank 32, llama-3.1-8b-h100):
  1. engine alone, coalesced mode, records in memory
  2. the same written to a run file through TwinBackend + replay_to_file
  3. saturated: arrival rate x4
  4. step-by-step reference mode on case 1's input
  5. 1,000,000 generated requests (8 h) in sketch mode, records streamed to a counter,
     peak RSS before/after (no growth beyond the records)
`--jitter 0.15:430` gives the profile speed variation (`step_jitter`, as calibrated profiles
have), which makes the coalesced mode price each step of a segment on its own.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

# the full public Azure trace lives beside the checkout (not bundled); override with --trace
# or TWINBENCH_TRACES
AZURE = os.path.join(os.environ.get("TWINBENCH_TRACES", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "traces")),
    "azure_llm_2023", "AzureLLMInferenceTrace_conv.csv")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def line(label: str, sim_s: float, wall_s: float, requests: int, stats: dict,
         cpu_s: float | None = None) -> None:
    cpu = f"cpu {cpu_s:7.2f} s (x{sim_s / cpu_s:6.0f})  " if cpu_s else ""
    print(f"{label:<34} wall {wall_s:7.2f} s  x{sim_s / wall_s:8.0f} real time  {cpu}"
          f"{requests / wall_s:9.0f} req/s  {stats.get('events', 0) / wall_s:9.0f} events/s  "
          f"steps {stats.get('steps')}  events {stats.get('events')}  "
          f"preemptions {stats.get('preemptions')}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=AZURE)
    ap.add_argument("--skip-step", action="store_true")
    ap.add_argument("--skip-million", action="store_true")
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=7, help="runs of case 1 (spread of CPU time)")
    ap.add_argument("--jitter", metavar="SIGMA:WINDOW_MS",
                    help="speed variation for the profile (step_jitter), e.g. 0.15:430")
    args = ap.parse_args()

    from twinbench import traces
    from twinbench.backends.base import ReplayOptions
    from twinbench.backends.twin import TwinBackend
    from twinbench.replay.run import replay_to_file
    from twinbench.twin import engine_build, simulate
    from twinbench.twin.config import ServerConfig
    # import what the first simulate() call would, so that case 1 times the engine, not imports
    import twinbench.twin.cluster  # noqa: F401
    import twinbench.twin.simulation  # noqa: F401

    if not os.path.exists(args.trace):
        print(f"no trace at {args.trace}; pass --trace", file=sys.stderr)
        return 2
    tr = traces.assign_adapters(traces.load(args.trace), "zipf:1.0", 32, seed=0)
    cfg = ServerConfig(max_loras=8, max_lora_rank=32)
    from twinbench.twin.profile import Profile
    profile = Profile.load("llama-3.1-8b-h100")
    if args.jitter:
        sigma, _, window = args.jitter.partition(":")
        profile = profile.with_changes(step_jitter={"sigma": float(sigma),
                                                    "window_ms": float(window)},
                                       name=f"llama-3.1-8b-h100+jitter {args.jitter}")
    sim_span = float(tr.arrival_s.max())
    print(f"trace: {len(tr)} requests over {sim_span:.0f} s; {cfg.max_loras} GPU slots, "
          f"profile {profile.name}, one core, python {sys.version.split()[0]}, "
          f"engine {engine_build()} (TWINBENCH_PURE_PYTHON=1: the .py sources)")

    t, c = time.perf_counter(), time.process_time()
    res = simulate(tr, cfg, profile)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    line("1. engine (coalesced)", res.stats["simulated_s"], wall, len(tr), res.stats, cpu)
    print(f"   os.getloadavg() = {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(other processes share the cores; cpu time is this process's)")
    # the same run again: a VM's CPU time varies by +-15 % run to run, so give the spread
    cpus = [cpu]
    for _ in range(args.repeat - 1):
        c = time.process_time()
        simulate(tr, cfg, profile)
        cpus.append(time.process_time() - c)
    sim_s = res.stats["simulated_s"]
    print(f"   {len(cpus)} runs, cpu s: min {min(cpus):.3f} (x{sim_s / min(cpus):.0f}), median "
          f"{float(np.median(cpus)):.3f} (x{sim_s / float(np.median(cpus)):.0f}), max "
          f"{max(cpus):.3f} (x{sim_s / max(cpus):.0f})")

    with tempfile.TemporaryDirectory() as d:
        t, c = time.perf_counter(), time.process_time()
        info, status, _ = replay_to_file(tr, TwinBackend(profile, cfg),
                                         ReplayOptions(quiet=True), os.path.join(d, "run.jsonl"))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        size = os.path.getsize(os.path.join(d, "run.jsonl")) / 1e6
    line(f"2. + run file ({size:.0f} MB)", info.extra["stats"]["simulated_s"], wall, len(tr),
         info.extra["stats"], cpu)

    fast = traces.time_scale(tr, 4.0) if hasattr(traces, "time_scale") else tr
    t, c = time.perf_counter(), time.process_time()
    sat = simulate(fast, cfg, profile)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    line("3. saturated (rate x4)", sat.stats["simulated_s"], wall, len(fast), sat.stats, cpu)
    ok = sum(r.status == "ok" for r in sat.records)
    print(f"   saturated: {ok} ok, simulated {sat.stats['simulated_s']:.0f} s")

    if not args.skip_step:
        t, c = time.perf_counter(), time.process_time()
        ref = simulate(tr, cfg, profile, mode="step")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        line("4. step-by-step reference", ref.stats["simulated_s"], wall, len(tr), ref.stats, cpu)
        same = all(a.end_s == b.end_s and np.array_equal(a.chunk_times, b.chunk_times)
                   for a, b in zip(sorted(res.records, key=lambda r: r.id),
                                   sorted(ref.records, key=lambda r: r.id)))
        print(f"   coalesced == step records: {same}")

    if not args.skip_million:
        n = args.requests
        hours = 8.0
        rng = np.random.default_rng(1)
        # Poisson arrivals over 8 h (~35 req/s), short chat lengths (prompt ~ lognormal,
        # median 180; output ~ geometric, mean 40) so that one server keeps up; Zipf adapters
        gen = traces.Trace(arrival_s=np.sort(rng.uniform(0, hours * 3600, n)),
                           adapter_idx=tr.adapter_idx[rng.integers(0, len(tr), n)],
                           prompt_tokens=np.clip(rng.lognormal(np.log(180), 0.6, n), 8, 4000).astype(np.int32),
                           output_tokens=rng.geometric(1 / 40, n).clip(1, 1000).astype(np.int32),
                           adapters=tr.adapters)
        gen_cfg = cfg.with_(max_num_seqs=256, max_num_batched_tokens=4096, max_loras=32)
        counted = [0, 0]

        def emit(rec):
            counted[0] += 1
            counted[1] += rec.output_tokens or 0

        before = rss_mb()
        t, c = time.perf_counter(), time.process_time()
        big = simulate(gen, gen_cfg, profile, token_timestamps="sketch", emit=emit)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        line(f"5. {n:,} requests, sketch", big.stats["simulated_s"], wall, n, big.stats, cpu)
        print(f"   records streamed {counted[0]:,}, tokens {counted[1]:,}; peak RSS "
              f"{before:.0f} MB before, {rss_mb():.0f} MB after (trace arrays "
              f"{gen.arrival_s.nbytes * 4 / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
