"""One self-contained HTML report: tables, and PNG figures embedded as base64 data URIs."""
from __future__ import annotations

import base64
import html
from typing import Any, Sequence

from twinbench.reports import plots
from twinbench.reports.compare import SMAPE_DEFINITION, SMAPE_PAPER_DEFINITION, Comparison
from twinbench.reports.metrics import Summary, definition_items
from twinbench.reports.render_text import ADAPTER_COLUMNS, fmt, is_number, sections

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1150px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child,td.l{text-align:left}
thead th{background:#f3f5f7}tr.section td{background:#eef3f8;font-weight:600;text-align:left}
.warn{background:#fff4e5;border:1px solid #f0b35a;padding:8px 12px;margin:8px 0}
.bad{color:#c62828;font-weight:600}.ok{color:#2e7d32}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
.small{font-size:12px;color:#555}
"""


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], raw_cols: set[int] = frozenset()
           ) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for r in rows:
        if isinstance(r, str):  # a section header row
            out.append(f'<tr class="section"><td colspan="{len(head)}">{html.escape(r)}</td></tr>')
            continue
        cells = "".join(
            (f"<td>{c if i in raw_cols else html.escape(str(c))}</td>" if i == 0 or is_number(str(c))
             else f'<td class="l">{c if i in raw_cols else html.escape(str(c))}</td>')
            for i, c in enumerate(r))
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _summary_rows(summaries: Sequence[Summary], comp: Comparison | None) -> tuple[list, list]:
    head = ["metric"] + [s.label for s in summaries]
    if comp is not None:
        head += [f"SMAPE % vs {comp.labels[0]}: {lab}" for lab in comp.labels[1:]]
        head += [f"SMAPE/2 % (paper): {lab}" for lab in comp.labels[1:]]
    smapes = {r.metric: r for r in comp.rows} if comp is not None else {}
    rows: list = []
    for title, items in sections(summaries[0]):
        rows.append(title)
        for label, key, digits in items:
            r = [label.rstrip(":")] + [fmt(s.metrics.get(key), digits) for s in summaries]
            if comp is not None:
                row = smapes.get(key)
                r += [fmt(x, 2) for x in (row.smape if row else [None] * (len(summaries) - 1))]
                r += [fmt(x, 2) for x in (row.smape_paper if row else [None] * (len(summaries) - 1))]
            rows.append(r)
    return head, rows


def _adapters(s: Summary) -> str:
    if not s.per_adapter:
        return ""
    head = ["adapter"] + [c[0] for c in ADAPTER_COLUMNS] + ["starving"]
    rows = []
    for name, a in s.per_adapter.items():
        st = s.starvation.adapters.get(name) if s.starvation else None
        if st is not None and st.starving:
            flag = '<span class="bad">YES</span>: ' + html.escape("; ".join(st.reasons))
        else:
            flag = '<span class="ok">no</span>'
        rows.append([name] + [fmt(a.metrics.get(k), d) for _, k, d in ADAPTER_COLUMNS] + [flag])
    return _table(head, rows, raw_cols={len(head) - 1})


def render_html(summaries: Sequence[Summary], comp: Comparison | None = None,
                gate: Sequence[Any] | None = None, title: str = "twinbench report") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts.append(_table(["run", "source", "token timing", "requests", "window (s)", "state"], [
        [s.label, s.source, s.timing, fmt(s.metrics.get("num_requests")),
         "whole run" if s.window is None else f"[{s.window[0]:g}, {s.window[1]:g})",
         "PARTIAL" if s.partial else "complete"] for s in summaries]))
    for s in summaries:
        if s.partial:
            parts.append(f'<div class="warn"><b>Partial run {html.escape(s.label)}</b>: '
                         f"{html.escape(s.partial_reason or '')}. Figures cover what was "
                         "recorded.</div>")
        for note in s.notes:
            parts.append(f'<p class="small">{html.escape(s.label)}: {html.escape(note)}</p>')
    if gate:
        parts.append("<h2>Regression gate</h2>")
        parts.append(_gate_table(gate))
    parts.append("<h2>Summary</h2>")
    head, rows = _summary_rows(summaries, comp)
    parts.append(_table(head, rows))
    if comp is not None:
        parts.append(f'<p class="small">{html.escape(SMAPE_DEFINITION)}. '
                     f"{html.escape(SMAPE_PAPER_DEFINITION)}.</p>")
    parts.append("<h2>Latency distributions</h2>")
    parts.append(_img(plots.latency_cdfs(summaries), "TTFT, ITL and E2EL CDFs"))
    parts.append("<h2>Over time</h2>")
    parts.append(_img(plots.over_time(summaries), "throughput and queue depth over time"))
    server = plots.server_metrics(summaries)
    if server:
        parts.append("<h2>Server metrics (scraped)</h2>" + _img(server, "server metrics"))
    for s in summaries:
        if s.per_adapter:
            parts.append(f"<h2>Per adapter: {html.escape(s.label)}</h2>")
            st = s.starvation
            if st is not None:
                cls = "bad" if st.run_starving else "ok"
                parts.append(f'<p>Run: <span class="{cls}">'
                             f"{'STARVING' if st.run_starving else 'not starving'}</span> "
                             f"({html.escape(st.run_reason)}; threshold {st.threshold:g}, "
                             f"Mann-Kendall α {st.alpha:g} Bonferroni over adapters)</p>")
            parts.append(_adapters(s))
            parts.append(_img(plots.served_vs_offered(s), f"served vs offered: {s.label}"))
    if comp is not None:
        parts.append(_comparison(comp))
    parts.append("<h2>Definitions</h2><ul>")
    parts += [f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>"
              for name, text in definition_items(summaries)]
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def _comparison(comp: Comparison) -> str:
    out = []
    if comp.per_adapter:
        keys = ["mean_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "mean_e2el_ms",
                "output_throughput", "served_token_ratio"]
        out.append(f"<h2>Per-adapter SMAPE % ({html.escape(comp.labels[1])} vs "
                   f"{html.escape(comp.labels[0])})</h2>")
        rows = []
        for a, arows in comp.per_adapter.items():
            by = {r.metric: r for r in arows}
            rows.append([a] + [fmt(by[k].smape[0] if k in by else None, 2) for k in keys])
        rows.append(["mean over adapters"] + [fmt((comp.adapter_smape_mean.get(k) or [None])[0], 2)
                                              for k in keys])
        out.append(_table(["adapter"] + keys, rows))
    if comp.starvation:
        out.append("<h2>Starvation agreement</h2>")
        rows = []
        for a, v in comp.starvation.items():
            cls = "bad" if v["verdict"] == "DISAGREE" else "ok"
            rows.append([a, f'<span class="{cls}">{html.escape(v["verdict"])}</span>']
                        + [fmt(f) for f in v["starving"]])
        out.append(_table(["adapter", "verdict"] + [f"starving in {x}" for x in comp.labels],
                          rows, raw_cols={1}))
    for n in comp.notes:
        out.append(f'<p class="small">{html.escape(n)}</p>')
    return "\n".join(out)


def _gate_table(gate: Sequence[Any]) -> str:
    rows = []
    for g in gate:
        ci = "n/a" if g.ci_pct is None else f"[{g.ci_pct[0]:+.1f}, {g.ci_pct[1]:+.1f}]"
        cls = "bad" if g.failed else "ok"
        rows.append([g.bound.text, fmt(g.base, 3), fmt(g.new, 3),
                     "n/a" if g.change_pct is None else f"{g.change_pct:+.2f}", ci,
                     fmt(g.rank_p, 4), f'<span class="{cls}">{html.escape(g.verdict)}</span>'])
    return _table(["bound", "base", "new", "change %", "bootstrap CI of change %",
                   "rank test p", "verdict"], rows, raw_cols={6})
