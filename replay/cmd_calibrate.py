"""`twinbench calibrate`: profile a real OpenAI-compatible server and write a twin profile.

    twinbench calibrate --base-url http://127.0.0.1:8000 --budget 5m -o my-server.json \\
        --max-num-seqs 16 --max-num-batched-tokens 2048 --max-loras 4

Scheduler limits cannot be read from outside the server: pass the flags it was started with
(same names as `vllm serve`); KV capacity and max_loras are read from /metrics when present.
See docs/calibration.md.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

COMMAND = ("calibrate",)
HELP = "profile a real server (step times, prefill, LoRA, adapter loads) into a twin profile"


def parse_budget(text: str) -> float:
    from twinbench.traces.errors import TwinbenchError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", text or "")
    if not m:
        raise TwinbenchError(f"--budget {text!r}: expected e.g. 30s, 5m or 300")
    value = float(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    if value < 10:
        raise TwinbenchError(f"--budget {text}: at least 10 s are needed")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twinbench.twin.config import add_server_arguments

    parser.add_argument("--base-url", required=True, metavar="URL",
                        help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", metavar="BASE", help="base model (default: from /v1/models)")
    parser.add_argument("--api-key", metavar="KEY", help="bearer token (default $OPENAI_API_KEY)")
    parser.add_argument("--adapters", metavar="NAME[:RANK],...",
                        help="adapters the plan may use (default: every adapter /v1/models "
                             "lists); ranks are read from adapter_config.json when readable")
    parser.add_argument("--budget", default="5m", metavar="T",
                        help="profiling wall time, e.g. 30s, 5m (default 5m)")
    parser.add_argument("-o", "--output", required=True, metavar="PROFILE.json",
                        help="profile to write")
    parser.add_argument("--plot", metavar="PNG", help="measured-vs-fitted plot "
                        "(default: next to the profile, .png)")
    parser.add_argument("--name", help="profile name (default: the output file's stem)")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    parser.add_argument("--force", action="store_true", help="overwrite the output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_server_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json

    from twinbench.backends.openai import OpenAIBackend, OpenAIConfig
    from twinbench.replay import calibrate as cal
    from twinbench.replay.calibrate_fit import build_profile, fit_all, plot_fit
    from twinbench.replay.calibrate_plan import (PlanFacts, build_plan, plan_cost_s,
                                                 scale_to_budget)
    from twinbench.traces.errors import TwinbenchError
    from twinbench.twin.config import ServerConfig

    budget_s = parse_budget(args.budget)
    out = args.output
    plot_path = args.plot or os.path.splitext(out)[0] + ".png"
    for path, flag in ((out, "-o"), (plot_path, "--plot")):
        if os.path.exists(path) and not args.force:
            raise TwinbenchError(f"{path}: exists; pass --force to overwrite it ({flag})")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise TwinbenchError(f"{path}: its directory does not exist ({flag})")
    if not args.base_url.startswith(("http://", "https://")):
        raise TwinbenchError(f"--base-url {args.base_url}: expected http://HOST:PORT")
    given = {k: v for k, v in vars(args).items() if k in ServerConfig.__dataclass_fields__
             and v is not None}
    backend = OpenAIBackend(OpenAIConfig(
        base_url=args.base_url, model=args.model, scrape_interval_s=0,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or None))
    backend.probe_now()
    target = cal.read_target(backend, cal.parse_adapters(args.adapters), given.get("max_loras"))
    target.runtime_loading = cal.check_runtime_loading(backend, target)
    prof = cal.Profiler(backend, target, budget_s, quiet=args.quiet, seed=args.seed)
    step_guess = prof.warm_up()
    if target.max_loras is None:  # published once the warm-up ran LoRA requests
        target.max_loras = cal.read_max_loras(backend)
    mml = int(given.get("max_model_len") or target.max_model_len)
    defaults = ServerConfig()
    flags = {**{k: getattr(defaults, k) for k in ("max_num_seqs", "max_num_batched_tokens",
                                                   "enable_chunked_prefill", "max_lora_rank")},
             **given, "max_model_len": mml, "max_loras": target.max_loras or
             given.get("max_loras") or (len(target.adapters) and 1) or 1}
    assumed = [k for k in ("max_num_seqs", "max_num_batched_tokens") if k not in given]
    if assumed and not args.quiet:
        print(f"twinbench: warning: {', '.join('--' + a.replace('_', '-') for a in assumed)} "
              "not given: assuming the twin's defaults; pass the server's values",
              file=sys.stderr)
    facts = PlanFacts(max_num_seqs=int(flags["max_num_seqs"]),
                      max_num_batched_tokens=int(flags["max_num_batched_tokens"]),
                      max_model_len=mml, max_loras=int(flags["max_loras"]),
                      adapters=tuple(target.adapters.items()),
                      runtime_loading=target.runtime_loading)
    full = build_plan(facts)
    remaining = max(5.0, prof.remaining())
    plan = scale_to_budget(full, remaining, step_guess)
    if not args.quiet:
        print(f"twinbench: profiling {target.base_url} ({target.model}, vLLM "
              f"{target.version or '?'}): {len(plan)} of {len(full)} plan points, est. "
              f"{plan_cost_s(plan, step_guess):.0f} s of {budget_s:.0f} s budget "
              f"(step guess {step_guess:.1f} ms)", file=sys.stderr)
    bar = cal.progress_bar(sum(p.repeats for p in plan), args.quiet)
    interrupted = False
    try:
        prof.run(plan, step_guess, on_batch=(lambda p: bar.update(1)) if bar else None)
    except KeyboardInterrupt:
        interrupted = True  # fit what was measured
    finally:
        if bar is not None:
            bar.close()
    profiling_s = prof.elapsed()
    decode, prefill = cal.rows_from_results(prof.results, target.adapters, target.lora_enabled,
                                            facts.max_num_batched_tokens)
    fit = fit_all(decode, prefill, prof.loads, target.lora_enabled)
    name = args.name or os.path.splitext(os.path.basename(out))[0]
    provenance = {
        "tool": "twinbench calibrate", "budget_s": budget_s, "profiling_s": round(profiling_s, 1),
        "interrupted": interrupted, "step_guess_ms": step_guess,
        "plan": {"points": [p.to_dict() for p in plan], "full_plan_points": len(full),
                 "ran": prof.ran, "skipped": prof.skipped},
        "raw": {"points": cal.raw_measurements(prof.results), "loads": prof.loads,
                "fit_rows": [{k: v for k, v in r.items() if k != "ttft_all_ms"}
                             for r in fit["rows"]]},
    }
    profile = build_profile(name, target, flags, fit, provenance)
    text = json.dumps(profile.to_json(), indent=1)
    tmp = out + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, out)
    plot_fit(fit["rows"], fit["step_time"], plot_path,
             f"{name}: {target.model} @ {target.base_url} (R² {fit['quality']['all']['r2']:.3f})")
    print(_report(profile, fit, profiling_s, out, plot_path))
    return 130 if interrupted else 0


def _report(profile, fit, profiling_s, out, plot_path) -> str:
    st = fit["step_time"]
    lf = st["lora_factor"]
    q = fit["quality"]
    lines = [f"profile {profile.name}: {out}  (plot {plot_path})",
             f"profiling {profiling_s:.1f} s, fit {fit['fit_s']:.2f} s, "
             f"{fit['fit_report']['rows']} rows",
             "fit quality (step ms):  rows      R²   |res| p50/p90/p99 ms    rel p50/p90/p99 %"]
    for kind, v in q.items():
        r2 = "n/a" if v["r2"] is None else f"{v['r2']:.3f}"
        a, r = v["abs_residual_ms"], v["rel_residual_pct"]
        lines.append(f"  {kind:<20} {v['rows']:>5} {r2:>7}   {a['p50']:6.2f} {a['p90']:6.2f} "
                     f"{a['p99']:6.2f}       {r['p50']:5.1f} {r['p90']:5.1f} {r['p99']:5.1f}")
    lines.append(f"step = {st['base_ms']:.3f} + {st['per_decode_seq_ms']:.4f}·B + "
                 f"{st['per_kv_token_ms']:.2e}·K + {st['per_prefill_token_ms']:.4f}·P + "
                 f"{st['per_prefill_attention_pair_ms']:.2e}·A ms; LoRA step "
                 f"+{st.get('per_lora_step_ms', 0.0):.3f} "
                 f"+{st.get('per_lora_prefill_token_ms', 0.0):.4f}·P ms; LoRA factor "
                 f"{lf['base']:.3f} + {lf['per_adapter']:.3f}·L + {lf['per_rank_unit']:.4f}·R; "
                 f"frontend {fit['frontend_ms']:.2f} ms")
    al = fit["adapter_load"]
    lines.append(f"adapter load: cpu→gpu {al['cpu_to_gpu_ms']:.2f} ms "
                 f"(+{al['cpu_to_gpu_per_rank_ms']:.3f}/rank), disk→cpu "
                 f"{al['disk_to_cpu_ms']:.2f} ms (+{al['disk_to_cpu_per_rank_ms']:.3f}/rank)")
    jitter = fit.get("step_jitter")
    lines.append("speed variation: " + (
        f"log-sd {jitter['sigma']:.3f} over windows of {jitter['window_ms']:.0f} ms "
        f"(step_jitter; validate averages 5 twin runs)" if jitter else
        "none measured (too few decode segments, or none that vary)"))
    return "\n".join(lines)
