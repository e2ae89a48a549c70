"""Scale benchmark of the trace layer: a 1,000,000-request trace (Poisson, 64 adapters,
Zipf 1.0) is generated, saved and loaded back in every native variant, each step in a fresh
subprocess so its peak memory (ru_maxrss, minus the interpreter's baseline) is its own.

    python bench/trace_scale.py [--requests N] [--formats npz,csv,jsonl]

Prints wall time and peak RSS per step, and whether the loaded trace equals the saved one.
Targets: each step < 5 s and < 200 MB peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

STEP = r"""
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import numpy as np
from twinbench.traces import generate, load, save
from twinbench.traces.transforms import equal
step, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
workload = {"requests": n, "arrival": {"process": "poisson", "rate": 1000.0},
            "adapters": {"count": 64, "ranks": [8, 16, 32], "popularity": "zipf:1.0"},
            "lengths": {"prompt": {"dist": "lognormal", "mean": 1000, "sigma": 0.8},
                        "output": {"dist": "lognormal", "mean": 200, "sigma": 0.8}}}
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
if step == "generate":
    t0 = time.perf_counter(); c0 = cpu(); tr = generate(workload, seed=0); out["seconds"] = time.perf_counter() - t0; out["cpu"] = cpu() - c0
elif step == "save":
    tr = generate(workload, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter(); c0 = cpu(); save(tr, path); out["seconds"] = time.perf_counter() - t0; out["cpu"] = cpu() - c0
    imported = before
elif step == "load":
    t0 = time.perf_counter(); c0 = cpu(); tr = load(path); out["seconds"] = time.perf_counter() - t0; out["cpu"] = cpu() - c0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ref = generate(workload, seed=0)
    out["identical"] = bool(equal(tr, ref))
    out["peak_mb_at_load"] = (after - imported) / 1024
out["requests"] = len(tr)
out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - imported) / 1024
if step == "load":
    out["peak_mb"] = out.pop("peak_mb_at_load")
out["baseline_mb"] = imported / 1024
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def run_step(step: str, n: int, path: str) -> dict:
    res = subprocess.run([sys.executable, "-c", STEP, step, str(n), path], capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise SystemExit(f"{step} failed:\n{res.stderr}")
    return json.loads(res.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--formats", default="npz,csv,jsonl")
    args = ap.parse_args()
    print(f"trace scale: {args.requests:,} requests, Poisson, 64 adapters, Zipf 1.0")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(wall times stretch under load; cpu times much less)")
    print("peak MB = max RSS growth of the step over the process after imports "
          "(for save: over the process holding the generated trace)")
    gen = run_step("generate", args.requests, "")
    print(f"{'generate':<14}{gen['seconds']:7.2f} s  (cpu {gen['cpu']:5.2f} s)  "
          f"peak {gen['peak_mb']:6.0f} MB (process max RSS {gen['rss_mb']:4.0f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        for ext in args.formats.split(","):
            path = os.path.join(tmp, f"trace.{ext}")
            sv = run_step("save", args.requests, path)
            size = os.path.getsize(path) / 1e6
            ld = run_step("load", args.requests, path)
            print(f"{'save .' + ext:<14}{sv['seconds']:7.2f} s  (cpu {sv['cpu']:5.2f} s)  "
                  f"peak {sv['peak_mb']:6.0f} MB  file {size:6.1f} MB")
            print(f"{'load .' + ext:<14}{ld['seconds']:7.2f} s  (cpu {ld['cpu']:5.2f} s)  "
                  f"peak {ld['peak_mb']:6.0f} MB  identical: {ld['identical']}")
            print(f"{'':14}process max RSS: save {sv['rss_mb']:.0f} MB (holds the generated "
                  f"trace), load+check {ld['rss_mb']:.0f} MB (also regenerates the reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
