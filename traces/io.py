"""`load` / `save`: format detection and dispatch to the loaders.

Formats: azure, burstgpt, mooncake, lengths (ShareGPT-style tables), servegen, workload
(a `.workload.json`, generated), and the native native-jsonl / native-csv / native-npz.
"""
from __future__ import annotations

import csv
import json
import os
import re
from typing import Callable

from twinbench.traces.core import Trace, TraceError

FORMATS = ("azure", "burstgpt", "mooncake", "lengths", "servegen", "workload",
           "native-jsonl", "native-csv", "native-npz")
ALIASES = {"sharegpt": "lengths", "jsonl": "native-jsonl", "csv": "native-csv",
           "npz": "native-npz", "native": "native-jsonl", "azure2023": "azure",
           "azure2024": "azure"}
SAVE_EXTENSIONS = {".jsonl": "native-jsonl", ".csv": "native-csv", ".npz": "native-npz"}
SERVEGEN_NAME = re.compile(r"chunk-\d+-(trace\.csv|dataset\.json)$")


def canonical_format(name: str | None, where: str = "--format") -> str | None:
    if name is None:
        return None
    fmt = ALIASES.get(name.lower(), name.lower())
    if fmt not in FORMATS:
        raise TraceError(f"{where} {name!r}: unknown format; choose one of "
                         f"{', '.join(FORMATS)}")
    return fmt


def loader(fmt: str) -> Callable[..., Trace]:
    if fmt == "azure":
        from twinbench.traces.fmt_azure import load_azure as fn
    elif fmt == "burstgpt":
        from twinbench.traces.fmt_burstgpt import load_burstgpt as fn
    elif fmt == "mooncake":
        from twinbench.traces.fmt_mooncake import load_mooncake as fn
    elif fmt == "lengths":
        from twinbench.traces.fmt_lengths import load_lengths as fn
    elif fmt == "servegen":
        from twinbench.traces.fmt_servegen import load_servegen as fn
    elif fmt == "workload":
        from twinbench.traces.workload import load_generated as fn
    elif fmt == "native-jsonl":
        from twinbench.traces.fmt_native_jsonl import load_native_jsonl as fn
    elif fmt == "native-csv":
        from twinbench.traces.fmt_native_csv import load_native_csv as fn
    else:
        from twinbench.traces.fmt_native_npz import load_native_npz as fn
    return fn


def detect_format(path: str) -> str:
    """Guess the format from the name and the first line; unknown formats are an error."""
    from twinbench.traces.table import normalise
    from twinbench.traces.textfile import check_text_bytes, sniff

    if os.path.isdir(path):
        if any(SERVEGEN_NAME.search(n) for n in os.listdir(path)):
            return "servegen"
        raise TraceError("directory holds no ServeGen chunk-N-trace.csv files", path)
    if SERVEGEN_NAME.search(os.path.basename(path)):
        return "servegen"
    head = sniff(path)
    if head.startswith(b"PK\x03\x04") and path.endswith(".npz"):
        return "native-npz"
    check_text_bytes(head, path)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    all_lines = text.split("\n")
    k = next(i for i, ln in enumerate(all_lines) if ln.strip())
    first = all_lines[k].strip("\r\n ")
    lineno = k + 1
    if first.startswith("# twinbench-trace"):
        return "native-csv"
    if path.endswith(".workload.json"):
        return "workload"
    if first.startswith("{"):
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            if path.endswith(".json"):
                return "workload"
            raise TraceError("first line is not a JSON object; unknown format (use --format)",
                             path, lineno) from None
        keys = set(obj) if isinstance(obj, dict) else set()
        if "twinbench_trace" in keys or "arrival_s" in keys:
            return "native-jsonl"
        if {"timestamp", "input_length"} <= keys:
            return "mooncake"
        raise TraceError(f"JSON lines with unknown fields {', '.join(sorted(keys)) or '(none)'}; "
                         "unknown format (use --format)", path, lineno)
    fields = next(csv.reader([first]))
    names = {normalise(f) for f in fields}
    if "timestamp" in names and names & {"contexttokens", "generatedtokens"}:
        return "azure"  # the loader names a missing column
    if "timestamp" in names and names & {"model", "request tokens", "response tokens"}:
        return "burstgpt"
    if "arrival s" in names and names & {"prompt tokens", "output tokens"}:
        return "native-csv"
    from twinbench.traces.fmt_lengths import OUTPUT_NAMES, PROMPT_NAMES

    if names & {normalise(n) for n in PROMPT_NAMES} and names & {normalise(n)
                                                                   for n in OUTPUT_NAMES}:
        return "lengths"
    if len(fields) == 6 and fields[3].strip() in ("Gamma", "Weibull", "") and \
            re.fullmatch(r"[0-9.eE+-]+", fields[0].strip() or "x"):
        return "servegen"
    shown = first if len(first) <= 60 else first[:57] + "..."
    raise TraceError(f"unknown trace format (first line {shown!r}); pass --format, one of "
                     f"{', '.join(FORMATS)}", path, lineno)


def load(path: str, format: str | None = None, strict: bool = False, **options) -> Trace:
    """Load any supported trace. `format` overrides detection; `strict` turns warnings about
    unsorted timestamps or unknown columns into errors. `options` go to the loader (e.g.
    `seed`, `arrival` for length tables, `window` for ServeGen, `failed` for BurstGPT)."""
    from twinbench.traces.samples import resolve

    path = resolve(str(path))
    fmt = canonical_format(format) or detect_format(path)
    if not os.path.exists(path):
        raise TraceError("no such file", path)
    try:
        return loader(fmt)(path, strict=strict, **options)
    except csv.Error as e:
        raise TraceError(f"CSV syntax error: {e}", path) from None
    except RecursionError:
        raise TraceError("nesting too deep", path) from None


def save(trace: Trace, path: str, format: str | None = None) -> None:
    """Write a native trace (`.jsonl`, `.csv` or `.npz`, or as `format` says).

    Writes a temporary file and renames it, so a failed save never leaves half a trace.
    """
    path = str(path)
    fmt = canonical_format(format)
    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        fmt = SAVE_EXTENSIONS.get(ext)
        if fmt is None:
            raise TraceError("cannot tell the native format from the extension; use .jsonl, "
                             ".csv or .npz (or --format)", path)
    if fmt not in SAVE_EXTENSIONS.values():
        raise TraceError(f"can only save native formats ({', '.join(SAVE_EXTENSIONS.values())}),"
                         f" not {fmt}", path)
    if fmt == "native-jsonl":
        from twinbench.traces.fmt_native_jsonl import save_native_jsonl as writer
    elif fmt == "native-csv":
        from twinbench.traces.fmt_native_csv import save_native_csv as writer
    else:
        from twinbench.traces.fmt_native_npz import save_native_npz as writer
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        writer(trace, tmp)
        os.replace(tmp, path)
    except TraceError as e:
        raise TraceError(e.reason, path, e.line) from None
    except OSError as e:
        raise TraceError(f"cannot write: {e.strerror}", path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
