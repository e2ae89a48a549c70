"""Run one validation: the real server `repeat` times, then the twin and the naive baseline on
the same trace, each into its own run file; summarise them and write the report.

Used by `twinbench validate` and `bench/fidelity.py`.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from twinbench.backends.base import ReplayOptions
from twinbench.traces.core import Trace
from twinbench.twin.config import ServerConfig
from twinbench.twin.profile import Profile


@dataclass
class StaticFacts:
    """What the real server says about itself before the first run (never during it)."""

    num_gpu_blocks: int | None = None
    block_size: int | None = None
    enable_prefix_caching: bool | None = None
    max_loras: int | None = None
    max_model_len: int | None = None
    version: str | None = None

    def as_config(self) -> dict[str, Any]:
        return {k: v for k, v in (("num_gpu_blocks", self.num_gpu_blocks),
                                  ("block_size", self.block_size),
                                  ("enable_prefix_caching", self.enable_prefix_caching),
                                  ("max_loras", self.max_loras),
                                  ("max_model_len", self.max_model_len)) if v is not None}


def read_static_facts(backend) -> StaticFacts:
    from twinbench.backends.server_metrics import parse_metrics
    from twinbench.replay.calibrate import metrics_text

    facts = backend.probe_now()
    cc = facts.cache_config or {}
    out = StaticFacts(version=facts.version)
    for key in ("num_gpu_blocks", "block_size"):
        if isinstance(cc.get(key), int):
            setattr(out, key, cc[key])
    if cc.get("enable_prefix_caching") in ("True", "False"):
        out.enable_prefix_caching = cc["enable_prefix_caching"] == "True"
    text = metrics_text(backend)
    if text:
        lora = parse_metrics(text).get("lora") or {}
        out.max_loras = lora.get("max_lora") or None
    base = backend.config.model or facts.base_model()
    mml = facts.max_model_len(base)
    out.max_model_len = int(mml) if mml else None
    return out


def twin_config(profile: Profile, facts: StaticFacts, given: dict[str, Any]) -> ServerConfig:
    """Profile defaults < the server's static facts < the user's flags."""
    d = ServerConfig().to_dict()
    d.update({k: v for k, v in profile.defaults.items() if k in d})
    d.update(facts.as_config())
    d.update({k: v for k, v in given.items() if k in d and v is not None})
    return ServerConfig.from_dict(d)


@dataclass
class ValidationRun:
    real_paths: list[str]
    twin_path: str
    baseline_path: str
    config: ServerConfig
    facts: StaticFacts
    status: str = "complete"
    notes: list[str] = field(default_factory=list)
    twin_seed_paths: list[str] = field(default_factory=list)  # more twin runs, other seeds


def twin_seeds_default(profile: Profile) -> int:
    """Twin runs to average: 5 when the profile's steps vary (each run is one draw of the
    server's drift), else 1 (the twin is deterministic)."""
    jitter = profile.data.get("step_jitter") or {}
    return 5 if float(jitter.get("sigma", 0.0)) > 0 else 1


def with_seed(profile: Profile, k: int) -> Profile:
    """`profile` with its speed variation drawn from seed + k."""
    jitter = dict(profile.data["step_jitter"])
    jitter["seed"] = int(jitter.get("seed", 0)) + k
    return profile.with_changes(step_jitter=jitter)


def run_all(trace: Trace, real_backend, profile: Profile, config: ServerConfig,
            facts: StaticFacts, options: ReplayOptions, outdir: str, repeat: int,
            force: bool = False, quiet: bool = False, twin_seeds: int = 1) -> ValidationRun:
    from twinbench.backends.twin import TwinBackend
    from twinbench.replay.run import replay_to_file
    from twinbench.twin.baseline import BaselineBackend

    os.makedirs(outdir, exist_ok=True)
    reals = []
    status = "complete"
    for i in range(repeat):
        path = os.path.join(outdir, f"real-{i + 1}.jsonl")
        if not quiet:
            print(f"twinbench: real run {i + 1}/{repeat} -> {path}", file=sys.stderr)
        if i:  # adapters registered by the previous run are now served: re-read the list
            real_backend.probe_now()
        _, st, _ = replay_to_file(trace, real_backend, options, path, force=force,
                                  label=f"real-{i + 1}")
        reals.append(path)
        if st != "complete":
            status = st
            break
    twin_path = os.path.join(outdir, "twin.jsonl")
    base_path = os.path.join(outdir, "baseline.jsonl")
    quiet_opts = ReplayOptions(**{**options.to_dict(), "quiet": True})
    replay_to_file(trace, TwinBackend(profile, config), quiet_opts, twin_path, force=force,
                   label="twin")
    seed_paths = twin_seed_runs(trace, profile, config, quiet_opts, outdir, twin_seeds, force)
    replay_to_file(trace, BaselineBackend(profile), quiet_opts, base_path, force=force,
                   label="baseline")
    return ValidationRun(reals, twin_path, base_path, config, facts, status,
                         twin_seed_paths=seed_paths)


def twin_seed_runs(trace: Trace, profile: Profile, config: ServerConfig,
                   options: ReplayOptions, outdir: str, twin_seeds: int, force: bool = False,
                   prefix: str = "twin") -> list[str]:
    """The twin runs after the first (`{prefix}-seed{k}.jsonl`, k = 1 .. twin_seeds - 1)."""
    from twinbench.backends.twin import TwinBackend
    from twinbench.replay.run import replay_to_file

    paths = []
    for k in range(1, twin_seeds):
        path = os.path.join(outdir, f"{prefix}-seed{k}.jsonl")
        replay_to_file(trace, TwinBackend(with_seed(profile, k), config), options, path,
                       force=force, label=f"twin-seed{k}")
        paths.append(path)
    return paths


def summarize_all(run: ValidationRun, window: tuple[float, float | None] | None,
                  drain_limit_s: float | None, starvation_threshold: float = 0.9,
                  alpha: float = 0.01):
    from twinbench.reports.load import load_path
    from twinbench.reports.metrics import summarize

    def one(path: str, label: str):
        return summarize(load_path(path), window=window, drain_limit_s=drain_limit_s,
                         label=label, starvation_threshold=starvation_threshold, alpha=alpha)

    from twinbench.replay.validate import mean_summary

    real = [one(p, f"real-{i + 1}") for i, p in enumerate(run.real_paths)]
    twin = mean_summary([one(run.twin_path, "twin"),
                         *(one(p, "twin") for p in run.twin_seed_paths)])
    return real, twin, one(run.baseline_path, "baseline")


def write_reports(outdir: str, run: ValidationRun, real, twin, base, fid, failures: list[str],
                  extra: dict[str, Any] | None = None, title: str = "twinbench validation"
                  ) -> tuple[str, str]:
    from twinbench.reports.cli_common import dumps_json
    from twinbench.reports.compare import compare
    from twinbench.reports.html import render_html
    from twinbench.replay.validate import html_section

    comp = compare(*real, twin, base)
    doc = {"fidelity": fid.to_dict(), "failures": failures, "status": run.status,
           "runs": {"real": run.real_paths, "twin": run.twin_path,
                    "twin_other_seeds": run.twin_seed_paths, "baseline": run.baseline_path},
           "twin_server_config": run.config.to_dict(),
           "server_static_facts": run.facts.__dict__,
           "summaries": {s.label: {k: v for k, v in s.to_dict().items() if k != "definitions"}
                         for s in (*real, twin, base)},
           "comparison": comp.to_dict(), **(extra or {})}
    json_path = os.path.join(outdir, "validation.json")
    with open(json_path, "w", encoding="utf-8") as f:
        f.write(dumps_json(doc) + "\n")
    page = render_html(comp.summaries, comp, title=title)
    cut = page.find("</h1>")
    section = html_section(fid)
    if failures:
        import html
        section = ("<div class='warn'><b>Fidelity bounds crossed</b><ul>"
                   + "".join(f"<li>{html.escape(x)}</li>" for x in failures) + "</ul></div>"
                   + section)
    page = page[:cut + 5] + section + page[cut + 5:] if cut >= 0 else section + page
    html_path = os.path.join(outdir, "validation.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    return json_path, html_path


def load_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
