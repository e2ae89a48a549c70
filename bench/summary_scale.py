"""Benchmark: summarise 1,000,000 records (~100 token chunks each), in memory and from disk.

Prints wall time, CPU time (user + system, the comparable figure on a shared machine) and
the peak RSS for: building the records, summarising the in-memory list (twice: the first pass
pays the first touch of fresh memory, which costs seconds per GiB of system time on a lazily
backed VM), writing the run file, and summarising the run file twice, each in a fresh process (so that
its peak RSS is its own): the first read parses the JSON and leaves the binary column cache
beside the file (`reports/colcache.py`), the second reads that cache. Target: each summary
under 10 s.
Compare wall with user+sys CPU: on a shared machine the difference is waiting for a core.

    python bench/summary_scale.py [--records 1000000] [--chunks 100] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor


def rss_peak_mib() -> float:
    """Peak RSS of this process image. Linux: VmHWM (ru_maxrss would carry the parent's peak
    over into a spawned child)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, fn):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    print(f"{label:<40} wall {dt:7.2f} s  cpu {user + system:6.2f} s (user {user:6.2f} s "
          f"sys {system:6.2f} s)  peak RSS {rss_peak_mib():6.0f} MiB", flush=True)
    return out, user + system


def first_touch_s_per_gib() -> float:
    """System time to fault in 1 GiB of fresh memory in a fresh process (np.ones): the
    machine's own cost, which every summary below pays for the memory it touches first.
    A lazily backed VM pays seconds per GiB here; bare metal a fraction of a second."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_touch_one_gib).result()


def _touch_one_gib() -> float:
    import numpy as np

    s0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    a = np.ones(1 << 27)  # 1 GiB of float64
    s1 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    del a
    return s1 - s0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true", help="keep the run file")
    ap.add_argument("--memory-only", action="store_true", help="skip the run-file part")
    ap.add_argument("--no-tune", action="store_true",
                    help="leave glibc's malloc as is (twinbench report/compare tune it)")
    args = ap.parse_args()
    if not args.no_tune:
        from twinbench.reports.memtune import reuse_freed_memory
        print(f"malloc tuned to reuse freed memory: {reuse_freed_memory()}")

    from twinbench.reports.metrics import summarize
    from twinbench.reports.colcache import cache_path
    from twinbench.reports.runfile import RunWriter
    from twinbench.reports.synthetic import bulk_records

    n, c = args.records, args.chunks
    print(f"this machine's first touch of fresh memory: {first_touch_s_per_gib():.2f} s of "
          "system time per GiB (np.ones in a fresh process)")
    print(f"{n:,} records x {c} chunks = {n * c:,} token chunks")
    records = timed("generate records", lambda: bulk_records(n, c, seed=1))[0]
    s, t_cold = timed("summarize(list of records), cold memory", lambda: summarize(records))
    del s
    s, t_mem = timed("summarize(list of records), again", lambda: summarize(records))
    print(f"  -> completed={s['completed']:,} mean_itl_ms={s['mean_itl_ms']:.4f} "
          f"p99_ttft_ms={s['p99_ttft_ms']:.3f} output_throughput={s['output_throughput']:.1f} "
          f"adapters={len(s.per_adapter)}")
    path = os.path.join(args.dir, f"twinbench-scale-{os.getpid()}.jsonl")

    if args.memory_only:
        return

    def write(recs: list) -> None:
        with RunWriter(path, {"label": "scale"}, flush_every_s=1.0) as w:
            for r in recs:
                w.emit(r)

    try:
        timed("write run file", lambda: write(records))
        print(f"  -> {os.path.getsize(path) / 2**20:,.0f} MiB on disk")
        records.clear()
        # a fresh process: its peak RSS is the reader's and the summary's own, as in
        # `twinbench report run.jsonl`
        ctx = multiprocessing.get_context("spawn")
        want = (s.metrics, {k: a.metrics for k, a in s.per_adapter.items()})
        t_disk = {}
        for how in ("first read: parse, then leave the column cache",
                    "again: from the column cache"):
            if how.startswith("again") and not os.path.exists(cache_path(path)):
                how = "again: parsed (no cache: run file under 32 MiB)"
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                figures, t_disk[how] = pool.submit(summarize_file, path, how,
                                                   not args.no_tune).result()
            print(f"  -> every figure (run and per adapter) identical to the in-memory "
                  f"summary: {figures == want}")
        cache = cache_path(path)
        if os.path.exists(cache):
            print(f"  -> column cache {os.path.getsize(cache) / 2**20:,.0f} MiB")
    finally:
        for p in (path, cache_path(path)):
            if not args.keep and os.path.exists(p):
                os.remove(p)
    first, again = t_disk.values()
    print(f"RESULT CPU time: in-memory {t_cold:.2f} s cold / {t_mem:.2f} s again, from the run "
          f"file {first:.2f} s first / {again:.2f} s again (target < 10 s each)")


def summarize_file(path: str, how: str, tune: bool) -> tuple[tuple[dict, dict], float]:
    """(run metrics, per-adapter metrics), CPU seconds: the run file summarised in this
    process, as `twinbench report` does (its first read of a large run file also writes the
    column cache beside it; later reads use that cache)."""
    if tune:
        from twinbench.reports.memtune import reuse_freed_memory
        reuse_freed_memory()
    from twinbench.reports.load import load_path
    from twinbench.reports.metrics import summarize

    loaded, cpu_load = timed(f"  load run file ({how})", lambda: load_path(path))
    s, cpu = timed("  summarize it", lambda: summarize(loaded))
    cpu += cpu_load
    return (s.metrics, {k: a.metrics for k, a in s.per_adapter.items()}), cpu


if __name__ == "__main__":
    main()
