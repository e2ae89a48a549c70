"""Workload files: adapters + arrival + length models, generated into a `Trace`.

The schema is documented in docs/workload.md. Two modes:
- per-adapter streams: every adapter has a `rate`; each is its own independent arrival
  process (the seed paper's workload: rate classes {1.6, 0.8, 0.4} req/s, ranks {8,16,32}
  round-robin);
- shared stream: adapters have a `share` (or none: equal shares); one arrival process at
  `arrival.rate` and each request draws its adapter (`base_share` goes to the base model).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from twinbench.traces.arrivals import arrival_times, nonnegative, positive
from twinbench.traces.assign import zipf_weights
from twinbench.traces.core import Adapter, Trace, TraceError
from twinbench.traces.lengths import default_source_loader, sample_lengths

TOP_KEYS = {"name", "description", "seed", "duration_s", "requests", "arrival", "lengths",
            "adapters", "base_share"}
ADAPTER_KEYS = {"name", "rank", "path", "rate", "share", "arrival", "lengths"}
GENERATOR_KEYS = {"count", "prefix", "ranks", "rates", "popularity", "path"}


@dataclass
class AdapterSpec:
    name: str
    rank: int = 16
    path: str | None = None
    rate: float | None = None
    share: float | None = None
    arrival: dict | None = None   # overrides the workload's arrival process
    lengths: dict | None = None   # overrides the workload's length model


@dataclass
class Workload:
    adapters: list[AdapterSpec]
    arrival: dict
    lengths: dict
    duration_s: float | None = None
    requests: int | None = None
    base_share: float = 0.0
    seed: int | None = None
    name: str | None = None
    base_dir: str | None = None   # where relative `source` paths are resolved
    raw: dict = field(default_factory=dict)

    @property
    def per_adapter_streams(self) -> bool:
        return bool(self.adapters) and all(a.rate is not None for a in self.adapters)


def expand_generator(gen: dict) -> list[dict]:
    """`{"count": N, "ranks": [...], "rates": [...] | "popularity": "zipf:S"}` -> adapters.
    Ranks and rates are assigned round-robin over the adapters (adapter k gets
    ranks[k % len], rates[k % len])."""
    unknown = set(gen) - GENERATOR_KEYS
    if unknown:
        raise TraceError(f"adapters: unknown key(s) {', '.join(sorted(unknown))}")
    count = gen.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TraceError(f"adapters.count: expected an integer >= 1, got {count!r}")
    ranks = gen.get("ranks", [8, 16, 32])
    if not isinstance(ranks, list) or not ranks:
        raise TraceError("adapters.ranks: expected a non-empty list of integers")
    prefix = str(gen.get("prefix", "lora-"))
    out = [{"name": f"{prefix}{k}", "rank": ranks[k % len(ranks)]} for k in range(count)]
    if gen.get("path"):
        for a in out:
            a["path"] = str(gen["path"]).replace("{name}", a["name"])
    if "rates" in gen and "popularity" in gen:
        raise TraceError("adapters: give rates or popularity, not both")
    if "rates" in gen:
        rates = gen["rates"]
        if not isinstance(rates, list) or not rates:
            raise TraceError("adapters.rates: expected a non-empty list of req/s")
        for k, a in enumerate(out):
            a["rate"] = rates[k % len(rates)]
    else:
        pop = str(gen.get("popularity", "uniform"))
        if pop == "uniform":
            shares = np.full(count, 1.0 / count)
        elif pop.startswith("zipf"):
            try:
                shares = zipf_weights(count, float(pop.partition(":")[2] or 1.0))
            except ValueError:
                raise TraceError(f"adapters.popularity: {pop!r} is not zipf:S") from None
        else:
            raise TraceError(f"adapters.popularity: {pop!r}; expected uniform or zipf:S")
        for a, s in zip(out, shares):
            a["share"] = float(s)
    return out


def parse_adapter(d, k: int) -> AdapterSpec:
    where = f"adapters[{k}]"
    if not isinstance(d, dict):
        raise TraceError(f"{where}: expected an object with name, rank, rate or share")
    unknown = set(d) - ADAPTER_KEYS
    if unknown:
        raise TraceError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = d.get("name")
    if not isinstance(name, str) or not name or "\n" in name:
        raise TraceError(f"{where}.name: expected a non-empty string")
    rank = d.get("rank", 16)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise TraceError(f"{where}.rank: expected an integer >= 1, got {rank!r}")
    if "rate" in d and "share" in d:
        raise TraceError(f"{where}: give rate or share, not both")
    return AdapterSpec(
        name=name, rank=rank, path=d.get("path"),
        rate=positive(d["rate"], f"{where}.rate") if "rate" in d else None,
        share=nonnegative(d["share"], f"{where}.share") if "share" in d else None,
        arrival=d.get("arrival"), lengths=d.get("lengths"))


def parse_workload(d: dict, base_dir: str | None = None) -> Workload:
    """Validate a workload dict (errors name the JSON path of the bad value)."""
    if not isinstance(d, dict):
        raise TraceError("workload: expected a JSON object")
    unknown = set(d) - TOP_KEYS
    if unknown:
        raise TraceError(f"unknown key(s) {', '.join(sorted(unknown))}; expected "
                         f"{', '.join(sorted(TOP_KEYS))}")
    raw_adapters = d.get("adapters", [])
    if isinstance(raw_adapters, dict):
        raw_adapters = expand_generator(raw_adapters)
    if not isinstance(raw_adapters, list):
        raise TraceError("adapters: expected a list or a {count, ranks, rates|popularity} "
                         "object")
    adapters = [parse_adapter(a, k) for k, a in enumerate(raw_adapters)]
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise TraceError(f"adapters: duplicate name {dup!r}")
    with_rate = [a.rate is not None for a in adapters]
    if any(with_rate) and not all(with_rate):
        raise TraceError("adapters: either every adapter has a rate (independent streams) or "
                         "none (shares of one stream)")
    if any(with_rate) and any(a.share is not None for a in adapters):
        raise TraceError("adapters: shares and rates cannot be mixed")
    arrival = d.get("arrival", {"process": "poisson"})
    if not isinstance(arrival, dict):
        raise TraceError("arrival: expected an object such as {\"process\": \"poisson\", "
                         "\"rate\": 2.0}")
    if "lengths" not in d:
        raise TraceError("lengths: missing (e.g. {\"dist\": \"empirical\", \"source\": "
                         "\"bundled:azure_conv\"})")
    duration = d.get("duration_s")
    requests = d.get("requests")
    if duration is None and requests is None:
        raise TraceError("give duration_s or requests (or both)")
    if requests is not None and (isinstance(requests, bool) or not isinstance(requests, int)
                                 or requests < 1):
        raise TraceError(f"requests: expected an integer >= 1, got {requests!r}")
    base_share = nonnegative(d.get("base_share", 0.0), "base_share")
    if adapters and not any(with_rate):
        total = sum(a.share if a.share is not None else 1.0 for a in adapters) + base_share
        if not total > 0:
            raise TraceError("adapters: shares sum to zero")
    seed = d.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise TraceError(f"seed: expected an integer >= 0, got {seed!r}")
    return Workload(adapters=adapters, arrival=arrival, lengths=d["lengths"],
                    duration_s=positive(duration, "duration_s") if duration is not None
                    else None,
                    requests=requests, base_share=base_share, seed=seed, name=d.get("name"),
                    base_dir=base_dir, raw=d)


def json_path_line(text: str, where: str) -> int:
    """Best-effort line of the value a JSON path (`adapters[3].rate`) names."""
    pos = 0
    for key in re.findall(r"([A-Za-z_][A-Za-z_0-9]*)|\[(\d+)\]", where.split(":")[0]):
        name, index = key
        if name:
            found = text.find(f'"{name}"', pos)
            if found < 0:
                break
            pos = found
        else:
            for _ in range(int(index) + 1):  # crude: the (index+1)-th object after pos
                found = text.find("{", pos + 1)
                if found < 0:
                    break
                pos = found
    return text.count("\n", 0, pos) + 1


def read_workload_text(path: str) -> tuple[str, str]:
    from twinbench.traces.samples import resolve
    from twinbench.traces.textfile import read_lines

    path = resolve(str(path))
    return path, "\n".join(read_lines(path))


def load_workload(path: str) -> Workload:
    path, text = read_workload_text(path)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"invalid JSON: {e.msg} at column {e.colno}", path, e.lineno) from None
    try:
        return parse_workload(d, base_dir=os.path.dirname(os.path.abspath(path)))
    except TraceError as e:
        if e.path is not None:
            raise
        raise TraceError(e.reason, path, json_path_line(text, e.reason)) from None


def as_workload(workload) -> Workload:
    if isinstance(workload, Workload):
        return workload
    return parse_workload(workload)


def generate(workload, seed: int | None = 0) -> Trace:
    """A trace from a workload (dict or `Workload`); the same seed gives the same trace.
    `seed=None` uses the workload's own `seed` (or 0)."""
    wl = as_workload(workload)
    if seed is None:
        seed = wl.seed if wl.seed is not None else 0
    root = np.random.SeedSequence([seed, 0x3A7])
    arrival_seq, length_seq, pick_seq = root.spawn(3)
    load_source = default_source_loader(wl.base_dir)
    dur, count = wl.duration_s, wl.requests
    if wl.per_adapter_streams:
        times, idx = stream_arrivals(wl, arrival_seq, dur, count)
    else:
        rng = np.random.default_rng(arrival_seq)
        spec = wl.arrival
        try:
            times = arrival_times(spec, rng, duration_s=dur, count=None if dur else count)
        except TraceError as e:
            raise TraceError(e.reason.replace("arrival.rate: expected a finite number, got None",
                                              "arrival.rate: missing (shared-stream workloads "
                                              "need a total rate)")) from None
        if count is not None:
            times = times[:count]
        idx = pick_adapters(wl, len(times), np.random.default_rng(pick_seq))
    if not len(times):
        raise TraceError("the workload generates no requests (duration too short or rates "
                         "too low)")
    prompt = np.empty(len(times), dtype=np.int32)
    output = np.empty(len(times), dtype=np.int32)
    rng = np.random.default_rng(length_seq)
    groups = [(-1, wl.lengths)] + [(k, a.lengths) for k, a in enumerate(wl.adapters)
                                    if a.lengths is not None]
    overridden = {k for k, _ in groups if k >= 0}
    for k, spec in groups:
        if k < 0:
            rows = np.flatnonzero(~np.isin(idx, list(overridden))) if overridden \
                else np.arange(len(times))
            where = "lengths"
        else:
            rows = np.flatnonzero(idx == k)
            where = f"adapters[{k}].lengths"
        p, o = sample_lengths(spec, rng, len(rows), load_source, where)
        prompt[rows], output[rows] = p, o
    meta = {"source": wl.raw.get("name") or "generated", "format": "workload", "sha256": None,
            "transforms": [], "seed": seed, "workload": wl.raw}
    return Trace(arrival_s=times, adapter_idx=idx.astype(np.int32), prompt_tokens=prompt,
                 output_tokens=output,
                 adapters=[Adapter(a.name, a.rank, a.path) for a in wl.adapters], meta=meta)


def stream_arrivals(wl: Workload, seq: np.random.SeedSequence, dur: float | None,
                    count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Independent streams, one per adapter, interleaved by time."""
    seqs = seq.spawn(len(wl.adapters))
    total_rate = sum(a.rate for a in wl.adapters)
    horizon = dur if dur is not None else 1.2 * count / total_rate + 10.0 / total_rate
    while True:
        parts, labels = [], []
        for k, (a, s) in enumerate(zip(wl.adapters, seqs)):
            shape = {key: v for key, v in wl.arrival.items() if key != "rate"}
            spec = {**shape, **(a.arrival or {}), "rate": a.rate}
            if spec.get("process") == "piecewise":
                raise TraceError(f"adapters[{k}]: per-adapter streams take a rate with a "
                                 "poisson, gamma or constant process; piecewise rates need a "
                                 "shared stream (adapters with shares)")
            t = arrival_times(spec, np.random.default_rng(s), duration_s=horizon,
                              where=f"adapters[{k}].arrival")
            parts.append(t)
            labels.append(np.full(len(t), k, dtype=np.int32))
        times, idx = np.concatenate(parts), np.concatenate(labels)
        order = np.argsort(times, kind="stable")
        times, idx = times[order], idx[order]
        if count is None or len(times) >= count or dur is not None:
            break
        horizon *= 2  # rare: not enough arrivals yet; same seeds, longer horizon
    if count is not None:
        times, idx = times[:count], idx[:count]
    return times, idx


def pick_adapters(wl: Workload, n: int, rng: np.random.Generator) -> np.ndarray:
    if not wl.adapters:
        return np.full(n, -1, dtype=np.int32)
    shares = np.array([a.share if a.share is not None else 1.0 for a in wl.adapters]
                      + [wl.base_share])
    choice = rng.choice(len(shares), n, p=shares / shares.sum())
    choice[choice == len(wl.adapters)] = -1
    return choice.astype(np.int32)


def load_generated(path: str, strict: bool = False, seed: int | None = None,
                   **_options) -> Trace:
    """`load()` of a `.workload.json`: generated with `seed`."""
    from twinbench.traces.table import file_meta

    trace = generate_from_file(path, seed)
    trace.meta.update({k: v for k, v in file_meta(path, "workload").items()
                       if k in ("source", "sha256")})
    return trace


def generate_from_file(path: str, seed: int | None = None) -> Trace:
    """Load and generate a workload file; errors found while generating (bad rates, length
    sources) also name the file and the line of the offending key."""
    wl = load_workload(path)
    try:
        return generate(wl, seed=seed)
    except TraceError as e:
        if e.path is not None:
            raise
        path, text = read_workload_text(path)
        raise TraceError(e.reason, path, json_path_line(text, e.reason)) from None
