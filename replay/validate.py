"""Twin fidelity against a real server: real repeats (noise floor), twin, naive baseline.

Three SMAPE columns per metric (common convention, `reports.stats.smape`):
    real vs real      mean over pairs of real repeats (the server's own run-to-run noise)
    twin vs real      mean over real repeats of SMAPE(real_i, twin)
    baseline vs real  the same for the naive constant-step baseline (`twin/baseline.py`)
A fidelity bound B on a metric fails when twin vs real > max(B, real vs real): where the server
itself varies more than the bound, the twin only has to stay within that variation. With three
or more real runs, each is also put in the twin's place against the others (`real_as_twin`):
how many bounds the server's own runs cross says whether the bounds can be met at all.

A twin whose profile has speed variation (`step_jitter`) is one draw of the server's drift, as
each real run is; its prediction is then the mean of several such draws (`mean_summary`):
each metric averaged over the twin runs, each starvation verdict by majority.

The twin's server config comes from the profile's defaults, the server's static facts read
before the first real run (KV blocks and block size from `vllm:cache_config_info`, max_loras
from `vllm:lora_requests_info`, max_model_len from /v1/models) and the user's flags, in that
order of precedence (flags win) — never from anything observed during the runs.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from twinbench.reports.metrics import Summary
from twinbench.reports.stats import smape
from twinbench.traces.errors import TwinbenchError

HEADLINE = ("output_throughput", "median_itl_ms", "median_ttft_ms", "p99_ttft_ms")
REPORTED = HEADLINE + ("request_throughput", "mean_ttft_ms", "p90_ttft_ms", "mean_itl_ms",
                       "p99_itl_ms", "median_tpot_ms", "median_e2el_ms", "p99_e2el_ms",
                       "served_token_ratio")
ADAPTER_METRICS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms",
                   "median_e2el_ms", "served_token_ratio")
DEFAULT_TARGETS = {"output_throughput": 3.0, "median_itl_ms": 5.0, "median_ttft_ms": 10.0,
                   "p99_ttft_ms": 20.0}


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(vals)) if vals else None


def three_columns(real: Sequence[dict], twin: dict, base: dict, key: str) -> dict[str, Any]:
    rv = [m.get(key) for m in real]
    pairs = [smape(a, b) for a, b in itertools.combinations(rv, 2)]
    return {"real": rv, "twin": twin.get(key), "baseline": base.get(key),
            "real_vs_real": _mean(pairs),
            "twin_vs_real": _mean([smape(r, twin.get(key)) for r in rv]),
            "baseline_vs_real": _mean([smape(r, base.get(key)) for r in rv])}


def _mean_metrics(dicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Numbers averaged over the runs that have them; anything else from the first run."""
    out = dict(dicts[0])
    for k, v in dicts[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = _mean([d.get(k) for d in dicts if isinstance(d.get(k), (int, float))])
    return out


def mean_summary(runs: Sequence[Summary]) -> Summary:
    """The twin's prediction from several runs that differ only in the speed-variation seed:
    the first run (its time series, run file and reasons) with every metric, overall and per
    adapter, averaged over the runs, and each adapter's starvation verdict by majority."""
    first = runs[0]
    if len(runs) == 1:
        return first
    per_adapter = {}
    for a, s in first.per_adapter.items():
        same = [r.per_adapter[a] for r in runs if a in r.per_adapter]
        per_adapter[a] = replace(s, metrics=_mean_metrics([x.metrics for x in same]))
    starvation = copy.deepcopy(first.starvation)
    if starvation is not None:
        for a in starvation.adapters:
            verdicts = [r.starvation.adapters[a] for r in runs
                        if r.starvation is not None and a in r.starvation.adapters]
            majority = bool(_majority([v.starving for v in verdicts]))
            # the verdict (with its reasons and figures) of the first run that agrees
            starvation.adapters[a] = copy.deepcopy(
                next(v for v in verdicts if v.starving == majority))
    return replace(first, metrics=_mean_metrics([r.metrics for r in runs]),
                   per_adapter=per_adapter, starvation=starvation,
                   notes=[*first.notes, f"mean of {len(runs)} twin runs (speed-variation seeds)"])


def _majority(flags: Sequence[bool | None]) -> bool | None:
    seen = [f for f in flags if f is not None]
    return None if not seen else sum(seen) * 2 > len(seen)


@dataclass
class Fidelity:
    metrics: dict[str, dict[str, Any]]
    per_adapter: dict[str, dict[str, dict[str, Any]]]
    starvation: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"smape_definition": "100·|a−b| / ((|a|+|b|)/2), 0–200 %, 0/0 = 0",
                "columns": {"real_vs_real": "mean SMAPE over pairs of real repeats",
                            "twin_vs_real": "mean over real repeats of SMAPE(real, twin)",
                            "baseline_vs_real": "mean over real repeats of "
                                                "SMAPE(real, naive baseline)"},
                "metrics": self.metrics, "per_adapter": self.per_adapter,
                "starvation": self.starvation, "notes": self.notes}


def fidelity(real: Sequence[Summary], twin: Summary, base: Summary) -> Fidelity:
    metrics = {k: three_columns([s.metrics for s in real], twin.metrics, base.metrics, k)
               for k in REPORTED}
    per_adapter: dict[str, dict[str, dict[str, Any]]] = {}
    adapters = [a for a in real[0].per_adapter if all(a in s.per_adapter for s in real)]
    for a in adapters:
        t = twin.per_adapter.get(a)
        b = base.per_adapter.get(a)
        if t is None or b is None:
            continue
        per_adapter[a] = {k: three_columns([s.per_adapter[a].metrics for s in real],
                                           t.metrics, b.metrics, k) for k in ADAPTER_METRICS}
    starvation: dict[str, dict[str, Any]] = {}
    for a in adapters:
        def flag(s: Summary) -> bool | None:
            st = s.starvation.adapters.get(a) if s.starvation is not None else None
            return None if st is None else bool(st.starving)

        def why(s: Summary) -> list[str]:
            st = s.starvation.adapters.get(a) if s.starvation is not None else None
            return [] if st is None else list(st.reasons)

        real_flags = [flag(s) for s in real]
        majority = _majority(real_flags)
        starvation[a] = {"real": real_flags, "real_majority": majority, "twin": flag(twin),
                         "baseline": flag(base),
                         "twin_agrees": flag(twin) == majority,
                         "baseline_agrees": flag(base) == majority,
                         "real_reasons": [why(s) for s in real], "twin_reasons": why(twin)}
    notes = []
    if len(real) < 2:
        notes.append("one real run: no real-vs-real noise floor (use --repeat 3)")
    return Fidelity(metrics, per_adapter, starvation, notes)


def real_as_twin(real: Sequence[Summary], base: Summary) -> list[Fidelity]:
    """Each real run scored in the twin's place against the other real runs.

    What a twin that predicts a run as well as the server's own next run would score: the
    ceiling against which bounds (and a twin) are judged. Needs >= 3 real runs, so that the
    others still have a noise floor; fewer give []."""
    if len(real) < 3:
        return []
    return [fidelity([*real[:k], *real[k + 1:]], r, base) for k, r in enumerate(real)]


def parse_bounds(text: str | None) -> dict[str, float | None]:
    """`--fail-above output_throughput:3,median_ttft_ms:10,starvation` (SMAPE %)."""
    if not text:
        return {}
    out: dict[str, float | None] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part == "targets":
            out.update(DEFAULT_TARGETS)
            out["starvation"] = None
            continue
        if part == "starvation":
            out["starvation"] = None
            continue
        key, sep, val = part.partition(":")
        try:
            bound = float(val)
        except ValueError:
            bound = -1.0
        if not sep or bound < 0:
            raise TwinbenchError(f"--fail-above {part!r}: expected METRIC:SMAPE_PCT, "
                                 "'starvation' or 'targets'")
        if key not in REPORTED:
            raise TwinbenchError(f"--fail-above {key}: not a validated metric "
                                 f"({', '.join(REPORTED)})")
        out[key] = bound
    return out


def check_bounds(f: Fidelity, bounds: dict[str, float | None]) -> list[str]:
    """Failures: twin vs real above max(bound, real vs real); starvation disagreements."""
    failed = []
    for key, bound in bounds.items():
        if key == "starvation":
            bad = [a for a, v in f.starvation.items() if not v["twin_agrees"]]
            if bad:
                failed.append(f"starvation verdicts disagree for {', '.join(bad)}")
            continue
        row = f.metrics[key]
        tv, noise = row["twin_vs_real"], row["real_vs_real"]
        if tv is None:
            failed.append(f"{key}: twin vs real SMAPE is n/a")
            continue
        limit = max(bound, noise or 0.0)
        if tv > limit:
            failed.append(f"{key}: twin vs real SMAPE {tv:.2f} % > {limit:.2f} % "
                          f"(bound {bound:g} %, real vs real {_pct(noise)})")
    return failed


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} %"


def _num(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, list):
        return "/".join(_num(v) for v in x)
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def text_table(f: Fidelity) -> str:
    lines = [f"{'metric':<22}{'real (repeats)':>30}{'twin':>10}{'baseline':>10}"
             f"{'real-vs-real':>14}{'twin-vs-real':>14}{'base-vs-real':>14}   (SMAPE %)"]
    for key, row in f.metrics.items():
        lines.append(f"{key:<22}{_num(row['real']):>30}{_num(row['twin']):>10}"
                     f"{_num(row['baseline']):>10}{_pct(row['real_vs_real']):>14}"
                     f"{_pct(row['twin_vs_real']):>14}{_pct(row['baseline_vs_real']):>14}")
    if f.per_adapter:
        lines.append("")
        lines.append("per adapter, SMAPE % real-vs-real / twin-vs-real / baseline-vs-real:")
        lines.append(f"{'adapter':<12}" + "".join(f"{k:>26}" for k in ADAPTER_METRICS[:4]))
        for a, rows in f.per_adapter.items():
            cells = []
            for k in ADAPTER_METRICS[:4]:
                r = rows[k]
                cells.append("/".join("n/a" if r[c] is None else f"{r[c]:.1f}" for c in
                                      ("real_vs_real", "twin_vs_real", "baseline_vs_real")))
            lines.append(f"{a:<12}" + "".join(f"{c:>26}" for c in cells))
    if f.starvation:
        lines.append("")
        lines.append("starvation verdicts (real repeats | twin | baseline):")
        for a, v in f.starvation.items():
            real = " ".join("?" if x is None else ("STARVING" if x else "ok") for x in v["real"])
            tw = "?" if v["twin"] is None else ("STARVING" if v["twin"] else "ok")
            bl = "?" if v["baseline"] is None else ("STARVING" if v["baseline"] else "ok")
            lines.append(f"  {a:<12} {real:<30} | {tw:<9}| {bl:<9}"
                         f"{'agree' if v['twin_agrees'] else 'DISAGREE'}")
    lines += [f"note: {n}" for n in f.notes]
    return "\n".join(lines)


def html_section(f: Fidelity) -> str:
    """The fidelity tables as an HTML fragment (inserted at the top of the reports page)."""
    import html

    def cell(x: Any) -> str:
        return html.escape(_num(x))

    out = ["<h2>Fidelity: SMAPE % (common convention)</h2>",
           "<table><tr><th>metric</th><th>real (repeats)</th><th>twin</th><th>baseline</th>"
           "<th>real vs real</th><th>twin vs real</th><th>baseline vs real</th></tr>"]
    for key, row in f.metrics.items():
        out.append(f"<tr><td>{key}</td><td>{cell(row['real'])}</td><td>{cell(row['twin'])}</td>"
                   f"<td>{cell(row['baseline'])}</td><td>{_pct(row['real_vs_real'])}</td>"
                   f"<td><b>{_pct(row['twin_vs_real'])}</b></td>"
                   f"<td>{_pct(row['baseline_vs_real'])}</td></tr>")
    out.append("</table>")
    if f.per_adapter:
        out.append("<h3>Per adapter (real vs real / twin vs real / baseline vs real, SMAPE %)"
                   "</h3><table><tr><th>adapter</th>"
                   + "".join(f"<th>{k}</th>" for k in ADAPTER_METRICS) + "</tr>")
        for a, rows in f.per_adapter.items():
            out.append(f"<tr><td>{html.escape(a)}</td>" + "".join(
                "<td>" + " / ".join("n/a" if rows[k][c] is None else f"{rows[k][c]:.1f}"
                                    for c in ("real_vs_real", "twin_vs_real",
                                              "baseline_vs_real")) + "</td>"
                for k in ADAPTER_METRICS) + "</tr>")
        out.append("</table>")
    if f.starvation:
        out.append("<h3>Starvation verdicts side by side</h3><table><tr><th>adapter</th>"
                   "<th>real repeats</th><th>twin</th><th>baseline</th><th>twin agrees</th>"
                   "</tr>")
        for a, v in f.starvation.items():
            out.append(f"<tr><td>{html.escape(a)}</td><td>{cell(v['real'])}</td>"
                       f"<td>{cell(v['twin'])}</td><td>{cell(v['baseline'])}</td>"
                       f"<td>{'yes' if v['twin_agrees'] else '<b>NO</b>'}</td></tr>")
        out.append("</table>")
    out += [f"<p class='small'>{html.escape(n)}</p>" for n in f.notes]
    return "\n".join(out)
