"""`advise adapters --surrogate`: the whole grid predicted in milliseconds, the twin confirms.

The surrogate picks (N, L); the twin then runs (N, L) and (N+1, L). If the twin disagrees,
N moves along the starvation frontier at that L (bisection down, doubling up) until the twin
pins it, so the final answer is always a twin verdict; the surrogate only saves runs.
"""
from __future__ import annotations

import time

import numpy as np

from twinbench.advisor import surrogate as sg
from twinbench.advisor.adapter_advisor import (AdapterAdvice, OBJECTIVE, WorkloadSlice,
                                               memory_exclusion, point_config, pool_adapters,
                                               pool_limit)
from twinbench.advisor.executor import map_points
from twinbench.advisor.search import Evaluation, SearchResult, choose_best, feasibility_frontier
from twinbench.advisor.surrogate_data import SurrogateBundle, replica_load
from twinbench.advisor.twin_runs import TwinJob, run_twin_point


def predict_grid(bundle: SurrogateBundle, pool: list[dict], profile, x_range, y_range,
                 exclude) -> tuple[list[Evaluation], float]:
    """Predicted (throughput, verdict) of every allowed (N, L): evaluations and ms taken."""
    t0 = time.perf_counter()
    rank = bundle.max_lora_rank
    lengths = (bundle.mean_prompt, bundle.mean_output)
    points, rows = [], []
    cap: dict[int, float] = {}
    for n in range(x_range[0], x_range[1] + 1):
        load = replica_load(pool, range(n), 1.0, lengths)
        slots = [s for s in range(y_range[0], min(y_range[1], n) + 1) if not exclude(n, s)]
        if not slots:
            continue
        for s in slots:
            if s not in cap:
                cap[s] = profile.kv_capacity_tokens(s, rank)
        points += [(n, s) for s in slots]
        rows.append(sg.features_many(load, slots, [cap[s] for s in slots]))
    if not rows:
        return [], 1000 * (time.perf_counter() - t0)
    tput, starving = bundle.model.predict(np.vstack(rows))
    evs = [Evaluation(p, float(t), not bool(s)) for p, t, s in zip(points, tput, starving)]
    return evs, 1000 * (time.perf_counter() - t0)


def advise_with_surrogate(path: str, *, workload_raw: dict, base_dir, profile, base_config,
                          executor, seed: int = 0, x_range=None, y_range=None,
                          duration_s: float | None = None, progress: bool = False
                          ) -> AdapterAdvice:
    bundle = SurrogateBundle.load(path)
    limit = pool_limit(workload_raw)
    x_hi = x_range[1] if x_range else (limit or int(workload_raw["adapters"]["count"]))
    x_range = (1, x_hi)
    y_range = y_range or (1, x_hi)
    pool = pool_adapters(workload_raw, x_hi + 1)
    exclude = memory_exclusion(profile, base_config, bundle.max_lora_rank)
    predicted, answer_ms = predict_grid(bundle, pool, profile, x_range, y_range, exclude)
    guess = choose_best(predicted, 0.01)
    duration = float(duration_s or workload_raw["duration_s"])
    results = {}
    search = SearchResult(best=None, evaluations={}, excluded={}, levels=[])
    notes = [f"surrogate ({bundle.model.kind}) answered the {len(predicted)}-point grid in "
             f"{answer_ms:.1f} ms; held-out score when trained: {bundle.score}"]
    if guess is None:
        notes.append("the surrogate predicts starvation everywhere; the twin checks N=1")
        guess = Evaluation((1, 1), 0.0, False)
    slots = guess.point[1]

    def twin(n: int) -> bool:
        if (n, slots) in search.evaluations:
            return search.evaluations[(n, slots)].feasible
        job = TwinJob(WorkloadSlice(workload_raw, base_dir, n, seed, duration),
                      point_config(base_config, n, slots, bundle.max_lora_rank), profile,
                      window=(0.0, duration), horizon_s=duration + 60.0,
                      token_timestamps="sketch", tag=(n, slots))
        r = map_points(run_twin_point, [job], executor, progress=False)[0]
        results[r.tag] = r
        search.evaluations[r.tag] = Evaluation(r.tag, r.metric(OBJECTIVE), not r.starving,
                                               {"served_token_ratio":
                                                r.metrics.get("served_token_ratio")})
        return not r.starving

    n0 = guess.point[0]
    known = {n0: twin(n0)}
    if n0 + 1 <= x_hi:
        known[n0 + 1] = twin(n0 + 1)
    if known[n0] and known.get(n0 + 1, False):   # the surrogate was too careful: grow
        hi = n0 + 1
        while hi < x_hi and twin(min(2 * hi, x_hi)):
            hi = min(2 * hi, x_hi)
        known.update({n: e.feasible for (n, s), e in search.evaluations.items() if s == slots})
    good, bad = feasibility_frontier(twin, 1, x_hi, known)
    best = (good, slots) if good is not None else None
    search.best = search.evaluations.get(best) if best else None
    predicted_at = {e.point: e for e in predicted}
    if best in predicted_at:
        p = predicted_at[best]
        notes.append(f"surrogate predicted {p.value:,.0f} tok/s, "
                     f"{'no starvation' if p.feasible else 'starvation'} at {best}; "
                     f"twin: {search.best.value:,.0f} tok/s")
    notes.append(f"twin confirmation runs: {len(search.evaluations)} (the grid search "
                 "would run every coarse and frontier point)")
    return AdapterAdvice(search, results, best, good, bad, x_range, y_range, limit, notes)
