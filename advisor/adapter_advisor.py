"""Adapters per GPU without starvation (arXiv 2508.08343, with a stricter starvation rule).

The question: of a workload's adapters, serve the first N (`max_cpu_loras` = N) with
`max_loras` = L GPU slots; which (N, L) gives the most throughput with no starvation — served
≥ 90 % of offered tokens AND no adapter starving (DESIGN §3 rules) — while L slots of
`max_lora_rank` leave enough KV memory for one `max_model_len` sequence. Searched on the twin
with `search.coarse_to_fine`; every point is one twin run through the executor.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from twinbench.advisor.executor import map_points
from twinbench.advisor.search import Evaluation, SearchResult, coarse_to_fine
from twinbench.advisor.twin_runs import PointResult, TwinJob, run_twin_point

OBJECTIVE = "output_throughput"
# Search runs keep no per-token times: the verdicts and window throughput are the same
# (window token counts are interpolated within a request) and runs are ~3x cheaper.
SEARCH_TIMING = "sketch"
GROW_CAP = 4096   # most adapters the range search grows to (vLLM serves far fewer per GPU)


@dataclass(frozen=True)
class WorkloadSlice:
    """A recipe for the trace of the first `n` adapters of a workload (built in the worker).

    Per-adapter streams are seeded per adapter index, so adapter k's requests are the same
    whatever n is. A generator workload (`"adapters": {"count": ...}`) can grow past its count
    (its round-robin rates and ranks continue); a listed one stops at its length.
    """

    raw: dict
    base_dir: str | None
    n: int
    seed: int
    duration_s: float | None = None     # overrides the workload's duration
    indices: tuple[int, ...] | None = None  # these adapters instead of the first n
    rate_scale: float = 1.0

    def build(self):
        from twinbench.traces.workload import generate, parse_workload
        raw = slice_raw(self.raw, self.n, self.duration_s, self.indices, self.rate_scale)
        return generate(parse_workload(raw, self.base_dir), seed=self.seed)


def slice_raw(raw: dict, n: int, duration_s: float | None = None,
              indices: tuple[int, ...] | None = None, rate_scale: float = 1.0) -> dict:
    from twinbench.traces.workload import expand_generator

    d = copy.deepcopy(raw)
    if indices is not None:
        ads = d.get("adapters", [])
        if isinstance(ads, dict):
            ads = expand_generator({**ads, "count": max(indices) + 1})
        d["adapters"] = [ads[i] for i in indices]
    elif isinstance(d.get("adapters"), dict):
        d["adapters"]["count"] = n
    else:
        d["adapters"] = list(d.get("adapters", []))[:n]
    if rate_scale != 1.0:
        if isinstance(d["adapters"], dict):
            d["adapters"]["rates"] = [r * rate_scale for r in d["adapters"]["rates"]]
        else:
            d["adapters"] = [{**a, "rate": a["rate"] * rate_scale} for a in d["adapters"]]
    if duration_s is not None:
        d["duration_s"] = duration_s
        d.pop("requests", None)
    return d


def pool_limit(raw: dict) -> int | None:
    """How many adapters the workload can offer (None: a generator, unbounded)."""
    return None if isinstance(raw.get("adapters"), dict) else len(raw.get("adapters", []))


def pool_adapters(raw: dict, n: int) -> list[dict]:
    """The first n adapter entries (name, rank, rate), a generator expanded."""
    from twinbench.traces.workload import expand_generator
    ads = raw.get("adapters", [])
    if isinstance(ads, dict):
        ads = expand_generator({**ads, "count": n})
    return list(ads[:n])


def pool_ranks(raw: dict, n: int) -> list[int]:
    return [int(a.get("rank", 16)) for a in pool_adapters(raw, n)]


@dataclass
class AdapterAdvice:
    search: SearchResult
    results: dict[tuple[int, int], PointResult]
    best: tuple[int, int] | None
    frontier_at_best: int | None        # largest N not starving at the best L
    first_starving_at_best: int | None  # smallest N starving at the best L (None: none seen)
    x_range: tuple[int, int]
    y_range: tuple[int, int]
    pool_size: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def memory_excluded(self) -> int:
        return sum(1 for why in self.search.excluded.values() if why.startswith("KV"))

    @property
    def margin(self) -> int | None:
        if self.best is None or self.frontier_at_best is None:
            return None
        return self.frontier_at_best - self.best[0]

    def to_dict(self) -> dict:
        best = self.results.get(self.best) if self.best else None
        return {
            "best": None if self.best is None else {
                "max_cpu_loras": self.best[0], "max_loras": self.best[1],
                **({} if best is None else {k: v for k, v in best.metrics.items()})},
            "margin_adapters": self.margin,
            "largest_non_starving_n_at_best_slots": self.frontier_at_best,
            "first_starving_n_at_best_slots": self.first_starving_at_best,
            "x_range": list(self.x_range), "y_range": list(self.y_range),
            "twin_runs": self.search.runs, "notes": self.notes,
            "surface": [{"max_cpu_loras": p[0], "max_loras": p[1], OBJECTIVE: e.value,
                         "starving": not e.feasible, **e.info}
                        for p, e in sorted(self.search.evaluations.items())],
            "excluded": [{"max_cpu_loras": p[0], "max_loras": p[1], "why": w}
                         for p, w in sorted(self.search.excluded.items())],
        }


def memory_exclusion(profile: Any, base_config: Any, max_lora_rank: int):
    """A point is never run when L LoRA slots leave KV for less than one max_model_len
    sequence (vLLM refuses to start then)."""
    need = base_config.max_model_len or profile.max_model_len

    def exclude(n: int, slots: int) -> str | None:
        if slots > n:
            return "max_loras > max_cpu_loras (vLLM refuses)"
        blocks = base_config.num_gpu_blocks or profile.num_gpu_blocks(
            base_config.block_size, slots, max_lora_rank)
        if blocks * base_config.block_size < need:
            return f"KV after {slots} LoRA slots of rank {max_lora_rank} < one {need}-token sequence"
        return None

    return exclude


def point_config(base_config: Any, n: int, slots: int, max_lora_rank: int) -> Any:
    return replace(base_config, enable_lora=True, max_cpu_loras=n, max_loras=slots,
                   max_lora_rank=max_lora_rank)


def advise_adapters(*, workload_raw: dict, base_dir: str | None, profile: Any, base_config: Any,
                    executor, seed: int = 0, x_range: tuple[int, int] | None = None,
                    y_range: tuple[int, int] | None = None, duration_s: float | None = None,
                    drain_s: float = 60.0, coarse_points: int = 7, parallel: int = 2,
                    tie_tolerance: float = 0.01, progress: bool = False) -> AdapterAdvice:
    """`x_range` None: from 1 to the workload's adapter count, and for a generator workload
    on until the first starving N (doubling, at most `GROW_CAP` adapters)."""
    limit = pool_limit(workload_raw)
    grow = x_range is None and limit is None
    if x_range is None:
        x_range = (1, limit if limit is not None else int(workload_raw["adapters"]["count"]))
    if limit is not None and x_range[1] > limit:
        x_range = (x_range[0], limit)
    slots_cap = None if y_range is None else y_range[1]   # None: up to N (memory permitting)
    max_rank = max(pool_ranks(workload_raw, GROW_CAP if grow else x_range[1]) or [16])
    max_rank = max(max_rank, base_config.max_lora_rank if base_config.max_lora_rank else 0)
    duration = duration_s or workload_raw.get("duration_s")
    if not duration:
        raise ValueError("the workload needs duration_s (or pass duration_s)")
    results: dict[tuple[int, int], PointResult] = {}

    def evaluate(points: list[tuple[int, int]]) -> list[Evaluation]:
        jobs = [TwinJob(WorkloadSlice(workload_raw, base_dir, n, seed, duration),
                        point_config(base_config, n, slots, max_rank), profile,
                        window=(0.0, float(duration)), horizon_s=float(duration) + drain_s,
                        token_timestamps=SEARCH_TIMING, tag=(n, slots)) for n, slots in points]
        out = []
        for r in map_points(run_twin_point, jobs, executor, desc="(adapters, slots)",
                            progress=progress):
            results[r.tag] = r
            out.append(Evaluation(r.tag, r.metric(OBJECTIVE), not r.starving,
                                  {"served_token_ratio": r.metrics.get("served_token_ratio"),
                                   "starving_adapters": len(r.starving_adapters),
                                   "why": r.starvation_reason}))
        return out

    exclude = memory_exclusion(profile, base_config, max_rank)
    known: list[Evaluation] = []
    if grow:  # find where starvation begins, so the margin means something
        n = x_range[1]
        while True:
            slots = min(slots_cap or n, n)
            while slots > 1 and exclude(n, slots):
                slots -= 1
            e = evaluate([(n, slots)])[0]
            known.append(e)
            if not e.feasible or n >= GROW_CAP:
                break
            n = min(2 * n, GROW_CAP)
        x_range = (x_range[0], n)
    if y_range is None:
        y_range = (1, x_range[1])
    search = coarse_to_fine(evaluate, x_range, y_range, exclude=exclude,
                            coarse_points=coarse_points, parallel=parallel,
                            tie_tolerance=tie_tolerance, known=known)
    best = search.best.point if search.best else None
    good = bad = None
    notes = [f"max_lora_rank {max_rank} (largest rank among the adapters searched)"]
    if best is not None:
        at = {p[0]: e.feasible for p, e in search.evaluations.items() if p[1] == best[1]}
        good = max((n for n, ok in at.items() if ok), default=None)
        bad = min((n for n, ok in at.items() if not ok and good is not None and n > good),
                  default=None)
        if bad is None:
            notes.append(f"no starvation seen up to {x_range[1]} adapters at max_loras "
                         f"{best[1]}: the margin is at least {x_range[1] - best[0]}")
    return AdapterAdvice(search, results, best, good, bad, x_range, y_range, limit, notes)
