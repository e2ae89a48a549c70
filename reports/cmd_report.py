"""`twinbench report RUN...`: summary tables (terminal, Markdown, JSON) and one HTML report.

RUN is a twinbench run file (partial files accepted, and said so) or a vLLM `bench serve`
result JSON saved with --save-detailed.
"""
from __future__ import annotations

import argparse

from twinbench.reports.cli_common import add_summary_arguments

COMMAND = ("report",)
HELP = "summarise runs: terminal table, Markdown, JSON, self-contained HTML with plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="twinbench run file(s) or vLLM result JSON file(s)")
    p.add_argument("-o", "--output", metavar="HTML", help="write a self-contained HTML report")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.add_argument("--markdown", action="store_true", help="print a Markdown report")
    p.add_argument("--export-vllm", metavar="JSON",
                   help="write the (first) run's summary in vLLM bench serve result keys")
    p.add_argument("--force", action="store_true", help="overwrite output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_summary_arguments(p)


def run(args: argparse.Namespace) -> int:
    from twinbench.reports.cli_common import (check_writable, dumps_json, summarize_paths,
                                              summary_kwargs, write_text)
    from twinbench.reports.render_text import adapter_table, markdown_report, terminal_table

    check_writable(args.output, args.force)
    from twinbench.reports.memtune import reuse_freed_memory
    reuse_freed_memory()  # big runs: reuse freed arrays instead of page-faulting anew
    check_writable(args.export_vllm, args.force, "--export-vllm")
    kwargs = summary_kwargs(args)
    summaries = summarize_paths(args.runs, kwargs, quiet=args.quiet,
                                cache=not args.no_cache)
    if args.json:
        docs = [s.to_dict() for s in summaries]
        print(dumps_json(docs[0] if len(docs) == 1 else docs))
    elif args.markdown:
        print(markdown_report(summaries), end="")
    else:
        print(terminal_table(summaries))
        for s in summaries:
            table = adapter_table(s)
            if table and len(s.per_adapter) > 1:
                print(f"\nPer adapter ({s.label}):\n{table}")
    if args.output:
        from twinbench.reports.html import render_html
        comp = None
        if len(summaries) > 1:
            from twinbench.reports.compare import compare
            comp = compare(*summaries)
        write_text(args.output, render_html(summaries, comp), args.force)
    if args.export_vllm:
        from twinbench.reports.load import load_path
        from twinbench.reports.vllm_io import to_vllm_result
        loaded = load_path(args.runs[0], cache=not args.no_cache)
        doc = to_vllm_result(summaries[0], loaded, kwargs["percentiles"])
        write_text(args.export_vllm, dumps_json(doc), args.force, "--export-vllm")
    return 0
