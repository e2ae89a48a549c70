"""Turn whatever the user hands us into a `LoadedRun`: a `RequestTable` plus what the file says.

Accepted: a twinbench run file path, a vLLM `bench serve` result JSON path, a `Run`
(read_run), a list of `RequestRecord`, a `RequestTable`, or a `LoadedRun`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from twinbench.reports.records import RequestRecord
from twinbench.reports.runfile import Run, RunFileError
from twinbench.reports.table import RequestTable, table_from_records


@dataclass
class LoadedRun:
    label: str
    table: RequestTable
    source: str = "records"              # "twinbench" | "vllm" | "records"
    path: str | None = None
    header: dict = field(default_factory=dict)
    footer: dict | None = None
    partial_reason: str | None = None
    samples: list[dict] = field(default_factory=list)   # scraped server metrics
    sketches: dict | None = None          # footer["sketches"] in sketch mode
    vllm: dict | None = None              # the vLLM result's own summary keys, if any

    @property
    def partial(self) -> bool:
        return self.partial_reason is not None


def _partial_reason(run: Run) -> str | None:
    if run.partial_reason:
        return run.partial_reason
    if run.footer is None:
        return "no footer line (the run did not end cleanly)"
    if run.footer.get("status") != "complete":
        why = run.footer.get("reason")
        return f"the run ended {run.footer.get('status')}" + (f" ({why})" if why else "")
    return None


def from_run(run: Run) -> LoadedRun:
    sketches = run.sketches
    table = table_from_records(run.records, sketch_mode=bool(sketches))
    return LoadedRun(label=run.label, table=table, source="twinbench", path=run.path,
                     header=run.header, footer=run.footer, partial_reason=_partial_reason(run),
                     samples=run.samples, sketches=sketches)


def is_vllm_result(path: str) -> bool:
    """A vLLM result is one JSON object (not JSON Lines) holding `duration` and `completed`."""
    with open(path, "rb") as f:
        head = f.read(4096)
    text = head.lstrip()
    return text.startswith(b"{") and b'"kind"' not in head[:200] and (
        b'"duration"' in head or b'"date"' in head or b'"backend"' in head)


def load_path(path: str | os.PathLike, fast: bool = True, cache: bool = True) -> LoadedRun:
    """`cache`: for a large run file, use (or leave) the binary column cache beside it
    (`reports/colcache.py`); the first read of such a file writes it, later reads skip the
    JSON."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RunFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise RunFileError(f"{path}: is a directory, not a run file")
    if is_vllm_result(path):
        from twinbench.reports.vllm_io import read_vllm_result
        return read_vllm_result(path)
    if fast:
        from twinbench.reports.fastread import read_run_table
        if not cache:
            return read_run_table(path)
        from twinbench.reports.colcache import read_through  # imports this module
        return read_through(path, read_run_table)
    from twinbench.reports.runfile import read_run
    return from_run(read_run(path))


def as_loaded(obj: Any, label: str | None = None) -> LoadedRun:
    if isinstance(obj, LoadedRun):
        loaded = obj
    elif isinstance(obj, Run):
        loaded = from_run(obj)
    elif isinstance(obj, RequestTable):
        loaded = LoadedRun(label="table", table=obj)
    elif isinstance(obj, (str, os.PathLike)):
        loaded = load_path(obj)
    elif isinstance(obj, Sequence) and (len(obj) == 0 or isinstance(obj[0], RequestRecord)):
        loaded = LoadedRun(label="records", table=table_from_records(obj))
    else:
        raise TypeError(f"cannot summarise a {type(obj).__name__}")
    if label is not None:
        loaded.label = label
    return loaded


def read_json_object(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    except UnicodeDecodeError:
        raise RunFileError(f"{path}: not a text file") from None
    if not isinstance(obj, dict):
        raise RunFileError(f"{path}: expected one JSON object")
    return obj
