"""Terminal and Markdown tables: vLLM's result layout with our additions, one column per run."""
from __future__ import annotations

from typing import Any, Sequence

from twinbench.reports.metrics import Summary, definition_items
from twinbench.reports.stats import percentile_word

WIDTH = 50
LATENCY_SECTIONS = (
    ("ttft", "Time to First Token", "TTFT"),
    ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
    ("itl", "Inter-token Latency", "ITL"),
    ("e2el", "End-to-end Latency", "E2EL"),
    ("ttft_from_arrival", "TTFT from arrival (incl. client delay)", "TTFT-arrival"),
    ("dispatch_lag", "Dispatch lag (client health)", "Lag"),
)


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if v.is_integer() and abs(v) < 1e15:
            return f"{v:.{digits}f}" if digits else str(int(v))
        return f"{v:.{digits}f}"
    return str(v)


def sections(summary: Summary, percentiles: Sequence[float] | None = None
             ) -> list[tuple[str, list[tuple[str, str, int]]]]:
    """[(section title, [(label, metric key, digits)])] in vLLM's order, then ours."""
    if percentiles is None:
        percentiles = [float(k.split("_")[0][1:]) for k in summary.metrics
                       if k.startswith("p") and k.endswith("_ttft_ms")]
    head = [("Successful requests:", "completed", 0), ("Failed requests:", "failed", 0),
            ("Benchmark duration (s):", "duration", 2),
            ("Total input tokens:", "total_input_tokens", 0),
            ("Total generated tokens:", "total_output_tokens", 0),
            ("Request throughput (req/s):", "request_throughput", 2)]
    if summary.metrics.get("request_goodput") is not None:
        head.append(("Request goodput (req/s):", "request_goodput", 2))
    head += [("Output token throughput (tok/s):", "output_throughput", 2),
             ("Peak output token throughput (tok/s):", "max_output_tokens_per_s", 2),
             ("Peak concurrent requests:", "max_concurrent_requests", 0),
             ("Total token throughput (tok/s):", "total_token_throughput", 2)]
    out = [("Serving Benchmark Result", head)]
    for metric, title, short in LATENCY_SECTIONS:
        rows = [(f"Mean {short} (ms):", f"mean_{metric}_ms", 2),
                (f"Median {short} (ms):", f"median_{metric}_ms", 2),
                (f"Std {short} (ms):", f"std_{metric}_ms", 2)]
        rows += [(f"P{percentile_word(p)} {short} (ms):", f"p{percentile_word(p)}_{metric}_ms", 2)
                 for p in percentiles]
        out.append((title, rows))
    out.append(("Offered vs served", [
        ("Offered requests:", "offered_requests", 0), ("Served requests:", "served_requests", 0),
        ("Offered tokens (prompt+output):", "offered_tokens", 0),
        ("Served tokens (prompt+output):", "served_tokens", 0),
        ("Served / offered tokens:", "served_token_ratio", 3),
        ("Never started:", "never_started_requests", 0),
        ("Errors:", "error_requests", 0), ("Timeouts:", "timeout_requests", 0),
        ("Cancelled:", "cancelled_requests", 0), ("Unfinished:", "unfinished_requests", 0)]))
    return out


def terminal_table(summaries: Sequence[Summary], labels: Sequence[str] | None = None) -> str:
    labels = list(labels or [s.label for s in summaries])
    col = max([12] + [len(x) + 2 for x in labels])
    width = 42 + col * len(summaries)
    lines = [f"!! PARTIAL RUN {s.label}: {s.partial_reason}" for s in summaries if s.partial]
    for title, rows in sections(summaries[0]):
        lines.append(f" {title} ".center(width, "=" if title.startswith("Serving") else "-"))
        if title.startswith("Serving") and len(summaries) > 1:
            lines.append(f"{'':<42}" + "".join(f"{x:>{col}}" for x in labels))
        for label, key, digits in rows:
            vals = [s.metrics.get(key) for s in summaries]
            lines.append(f"{label:<42}" + "".join(f"{fmt(v, digits):>{col}}" for v in vals))
    lines.append("=" * width)
    lines += _footnotes(summaries)
    return "\n".join(lines)


def _footnotes(summaries: Sequence[Summary]) -> list[str]:
    lines = []
    for s in summaries:
        tag = f"[{s.label}] " if len(summaries) > 1 else ""
        if s.partial:
            lines.append(f"{tag}PARTIAL RUN: {s.partial_reason}; figures cover what was recorded")
        lines.append(f"{tag}token timing: {s.timing}" + (
            f"; window [{s.window[0]:g}, {s.window[1]:g}) s" if s.window else ""))
        for note in s.notes:
            lines.append(f"{tag}note: {note}")
        st = s.starvation
        if st is not None:
            run = "STARVING" if st.run_starving else "not starving"
            lines.append(f"{tag}starvation: run {run} ({st.run_reason})")
            for a, info in st.adapters.items():
                if info.starving:
                    lines.append(f"{tag}  adapter {a} STARVING: " + "; ".join(info.reasons))
    return lines


ADAPTER_COLUMNS = (("offered", "offered_requests", 0), ("served", "served_requests", 0),
                   ("served/offered tok", "served_token_ratio", 3),
                   ("mean TTFT ms", "mean_ttft_ms", 1), ("p99 TTFT ms", "p99_ttft_ms", 1),
                   ("mean ITL ms", "mean_itl_ms", 2), ("out tok/s", "output_throughput", 1))


def adapter_table(summary: Summary, markdown: bool = False) -> str:
    if not summary.per_adapter:
        return ""
    head = ["adapter"] + [c[0] for c in ADAPTER_COLUMNS] + ["starving"]
    rows = []
    for name, s in summary.per_adapter.items():
        st = summary.starvation.adapters.get(name) if summary.starvation else None
        flag = "n/a" if st is None else ("YES: " + "; ".join(st.reasons) if st.starving else "no")
        rows.append([name] + [fmt(s.metrics.get(k), d) for _, k, d in ADAPTER_COLUMNS] + [flag])
    return _grid(head, rows, markdown)


def _grid(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    numeric = [all(is_number(r[i]) for r in rows) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(f"{x:>{w}}" if num and i else f"{x:<{w}}"
                         for i, (x, w, num) in enumerate(zip(r, widths, numeric))).rstrip()
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def is_number(text: str) -> bool:
    """Whether a table cell holds a number (or n/a): such columns align right."""
    if text == "n/a":
        return True
    try:
        float(text)
        return True
    except ValueError:
        return False


def markdown_report(summaries: Sequence[Summary]) -> str:
    labels = [s.label for s in summaries]
    out = ["# twinbench report", ""]
    for s in summaries:
        if s.partial:
            out.append(f"> **Partial run** `{s.label}`: {s.partial_reason}")
    for title, rows in sections(summaries[0]):
        out += ["", f"## {title}", "", "| metric | " + " | ".join(labels) + " |",
                "|---|" + "---|" * len(labels)]
        for label, key, digits in rows:
            out.append(f"| {label.rstrip(':')} | "
                       + " | ".join(fmt(s.metrics.get(key), digits) for s in summaries) + " |")
    for s in summaries:
        if s.per_adapter:
            out += ["", f"## Per adapter: {s.label}", "", adapter_table(s, markdown=True)]
    out += ["", "## Notes", ""] + [f"- {x}" for x in _footnotes(summaries)]
    out += ["", "## Definitions", ""]
    out += [f"- **{name}**: {text}" for name, text in definition_items(summaries)]
    return "\n".join(out) + "\n"


def comparison_table(comp: Any, markdown: bool = False, keys: Sequence[str] | None = None) -> str:
    """Metric | value per run | SMAPE vs baseline (common) | SMAPE (paper, halved)."""
    head = ["metric"] + comp.labels
    for lab in comp.labels[1:]:
        head += [f"SMAPE% {lab}", f"SMAPE/2% {lab}"]
    rows = []
    for r in comp.rows:
        if keys is not None and r.metric not in keys:
            continue
        rows.append([r.metric] + [fmt(v, 3) for v in r.values]
                    + [x for pair in zip(r.smape, r.smape_paper) for x in
                       (fmt(pair[0], 2), fmt(pair[1], 2))])
    return _grid(head, rows, markdown)


def starvation_table(comp: Any, markdown: bool = False) -> str:
    head = ["adapter", "verdict"] + [f"starving in {x}" for x in comp.labels]
    rows = [[a, v["verdict"]] + [fmt(f) for f in v["starving"]]
            for a, v in comp.starvation.items()]
    return _grid(head, rows, markdown) if rows else ""


def adapter_smape_table(comp: Any, metrics: Sequence[str], markdown: bool = False) -> str:
    if not comp.per_adapter:
        return ""
    head = ["adapter"] + [f"{m} SMAPE%" for m in metrics]
    rows = []
    j = 0  # SMAPE of the second run vs the baseline
    for a, arows in comp.per_adapter.items():
        by = {r.metric: r for r in arows}
        rows.append([a] + [fmt(by[m].smape[j] if m in by else None, 2) for m in metrics])
    rows.append(["mean over adapters"] + [fmt((comp.adapter_smape_mean.get(m) or [None])[j], 2)
                                          for m in metrics])
    return _grid(head, rows, markdown)
