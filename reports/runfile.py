"""The run file: JSON Lines with a header, one line per record as it arrives, and a footer.

    {"kind": "header", "format": "twinbench-run/1", ...}
    {"kind": "record", ...RequestRecord.to_json()}          one per trace request
    {"kind": "sample", "t": run-clock s, "metrics": {...}}   scraped server metrics (optional)
    {"kind": "info", ...}                                    what the backend knows of itself
    {"kind": "footer", "status": "complete" | "interrupted", ...}

A crash leaves every complete line readable; the reader stops at the first incomplete or
unparsable line and marks the run partial. Files are never overwritten unless asked.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from twinbench.reports.records import RequestRecord
from twinbench.traces.errors import TwinbenchError

FORMAT = "twinbench-run/1"


class RunFileError(TwinbenchError):
    """A run file that cannot be read or written; the message names the file and line."""


def json_default(o: Any) -> Any:
    """NumPy scalars and arrays as plain JSON values."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), default=json_default)


class RunWriter:
    """Writes a run file line by line; also the record sink backends emit into.

    `flush_every_s=0` flushes after each line (real servers: nothing measured is lost);
    the twin, which emits far faster, flushes on a timer.
    """

    def __init__(self, path: str | os.PathLike, header: dict, force: bool = False,
                 flush_every_s: float = 0.0):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not force:
            raise RunFileError(f"{self.path}: exists; pass --force to overwrite it")
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")
        self._flush_every_s = flush_every_s
        self._last_flush = time.monotonic()
        self.records = 0
        self.closed = False
        head = {"kind": "header", "format": FORMAT}
        head.update(header)
        self._write(head, flush=True)

    def _write(self, obj: dict, flush: bool = False) -> None:
        self._f.write(dumps(obj) + "\n")
        now = time.monotonic()
        if flush or now - self._last_flush >= self._flush_every_s:
            self._f.flush()
            self._last_flush = now

    def emit(self, record: RequestRecord) -> None:
        d = record.to_json()
        d = {"kind": "record", **d}
        self._write(d)
        self.records += 1

    def sample(self, t: float, metrics: dict) -> None:
        self._write({"kind": "sample", "t": t, "metrics": metrics})

    def info(self, info: dict) -> None:
        self._write({"kind": "info", **info}, flush=True)

    def close(self, status: str = "complete", **footer: Any) -> None:
        if self.closed:
            return
        self._write({"kind": "footer", "status": status, "records": self.records,
                     "ended_unix_s": time.time(), **footer}, flush=True)
        self._f.close()
        self.closed = True

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("complete" if exc_type is None else "interrupted",
                   **({} if exc is None else {"reason": f"{type(exc).__name__}: {exc}"}))


class ListSink:
    """An in-memory record sink (tests, sweeps)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self.samples: list[tuple[float, dict]] = []

    def emit(self, record: RequestRecord) -> None:
        self.records.append(record)

    def sample(self, t: float, metrics: dict) -> None:
        self.samples.append((t, metrics))


@dataclass
class Run:
    """A run file read back."""

    path: str
    header: dict
    records: list[RequestRecord]
    samples: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    footer: dict | None = None
    partial_reason: str | None = None

    @property
    def partial(self) -> bool:
        return self.partial_reason is not None or self.footer is None \
            or self.footer.get("status") != "complete"

    @property
    def sketches(self) -> dict | None:
        """Quantile sketches of a sketch-mode run, {adapter or "*": {"itl": sketch JSON, ...}}:
        from the footer, or from the backend's info line (`info["extra"]["sketches"]`)."""
        return find_sketches(self.footer, self.info)

    @property
    def label(self) -> str:
        return self.header.get("label") or os.path.basename(self.path)


def find_sketches(footer: dict | None, info: dict | None) -> dict | None:
    for holder in ((footer or {}), (info or {}), (info or {}).get("extra") or {}):
        if isinstance(holder.get("sketches"), dict) and holder["sketches"]:
            return holder["sketches"]
    return None


def read_run(path: str | os.PathLike) -> Run:
    path = os.fspath(path)
    try:
        f = open(path, "r", encoding="utf-8", errors="strict")
    except OSError as e:
        raise RunFileError(f"{path}: cannot open run file: {e.strerror}") from None
    header: dict | None = None
    records: list[RequestRecord] = []
    samples: list[dict] = []
    info: dict = {}
    footer = None
    partial_reason = None
    with f:
        for lineno, line in enumerate(_lines(f, path), start=1):
            if not line.endswith("\n"):
                partial_reason = f"line {lineno} is incomplete (the run was cut off)"
                break
            try:
                obj = json.loads(line)
                kind = obj.get("kind")
            except (json.JSONDecodeError, AttributeError):
                if header is None:
                    raise RunFileError(f"{path}:{lineno}: not a twinbench run file (not JSON)") from None
                partial_reason = f"line {lineno} is not valid JSON"
                break
            if header is None:
                if kind != "header" or not str(obj.get("format", "")).startswith("twinbench-run/"):
                    raise RunFileError(f"{path}:{lineno}: not a twinbench run file (no header line)")
                header = obj
            elif kind == "record":
                try:
                    records.append(RequestRecord.from_json(obj))
                except (KeyError, TypeError, ValueError) as e:
                    raise RunFileError(f"{path}:{lineno}: bad record: {e}") from None
            elif kind == "sample":
                samples.append(obj)
            elif kind == "info":
                info.update({k: v for k, v in obj.items() if k != "kind"})
            elif kind == "footer":
                footer = obj
    if header is None:
        raise RunFileError(f"{path}: empty run file")
    return Run(path=path, header=header, records=records, samples=samples, info=info,
               footer=footer, partial_reason=partial_reason)


def _lines(f, path: str) -> Iterable[str]:
    try:
        yield from f
    except UnicodeDecodeError:
        raise RunFileError(f"{path}: not a twinbench run file (binary data)") from None
