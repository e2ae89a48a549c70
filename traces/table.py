"""Column helpers shared by the CSV-like loaders: header matching, numeric parsing, ordering.

Parsing is vectorised with NumPy; only when a column fails do we walk it value by value to
name the exact line that is wrong.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from twinbench.traces.core import TraceError
from twinbench.traces.errors import warn
from twinbench.traces.textfile import first_content_line


@dataclass
class Table:
    """String columns of a CSV file plus the file line of every row."""

    path: str
    columns: dict[str, list[str]]  # canonical column name -> values
    line_numbers: np.ndarray       # int64, file line (1-based) of each row
    header: list[str]

    def __len__(self) -> int:
        return len(self.line_numbers)


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def split_header(line: str) -> list[str]:
    return next(csv.reader([line]))


def read_table(path: str, lines: list[str], wanted: dict[str, Sequence[str]],
               optional: Sequence[str] = (), strict: bool = False,
               known_extra: Sequence[str] = ()) -> Table:
    """Match a CSV header against `wanted` (canonical -> accepted spellings) and split rows.

    Missing wanted columns and rows with the wrong number of fields are errors; header
    columns nobody reads are a warning (an error under `strict`).
    """
    start = first_content_line(lines)
    if start == len(lines):
        raise TraceError("empty file, no header or requests", path, 1)
    header = split_header(lines[start])
    norm = [normalise(h) for h in header]
    where: dict[str, int] = {}
    for canon, spellings in wanted.items():
        for s in spellings:
            if normalise(s) in norm:
                where[canon] = norm.index(normalise(s))
                break
        else:
            if canon not in optional:
                raise TraceError(f"missing column {spellings[0]!r} (header is {','.join(header)})",
                                 path, start + 1)
    used = set(where.values()) | {i for i, h in enumerate(norm) if h in map(normalise, known_extra)}
    extra = [header[i] for i in range(len(header)) if i not in used]
    if extra:
        msg = f"unexpected column(s) {', '.join(map(repr, extra))} in header"
        if strict:
            raise TraceError(msg, path, start + 1)
        warn(msg + " (ignored)", path, start + 1)
    body = [(i + 1, ln) for i, ln in enumerate(lines[start + 1:], start + 1) if ln.strip()]
    if not body:
        raise TraceError("no requests after the header", path, start + 1)
    rows = list(csv.reader(ln for _, ln in body))
    width = len(header)
    for (lineno, _), row in zip(body, rows):
        if len(row) != width:
            what = "missing" if len(row) < width else "extra"
            raise TraceError(f"{len(row)} fields, header has {width} ({what} columns)",
                             path, lineno)
    columns = {canon: [row[i] for row in rows] for canon, i in where.items()}
    return Table(path=path, columns=columns,
                 line_numbers=np.array([n for n, _ in body], dtype=np.int64), header=header)


def fast_parse(values: Sequence[str], dtype) -> np.ndarray | None:
    """Parse plain numbers with NumPy's C text parser; None if anything looks unusual (the
    caller then takes the slow path, which can name the bad line)."""
    import warnings

    if not len(values):
        return np.empty(0, dtype=dtype)
    joined = ",".join(values)
    if " " in joined or "\t" in joined:  # NumPy would read a blank field as 0
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = np.fromstring(joined, sep=",", dtype=dtype)
    except (ValueError, TypeError, DeprecationWarning):
        return None
    return out if len(out) == len(values) else None


def parse_floats(values: Sequence[str], name: str, path: str, line_numbers: np.ndarray,
                 finite: bool = True) -> np.ndarray:
    out = fast_parse(values, np.float64) if isinstance(values, list) else None
    try:
        if out is None:
            out = np.array(values, dtype=np.float64)
    except (ValueError, TypeError):
        for k, v in enumerate(values):
            try:
                float(v)
            except (ValueError, TypeError):
                raise TraceError(f"{name}: {str(v)!r} is not a number", path,
                                 int(line_numbers[k])) from None
        raise TraceError(f"{name}: unparsable values", path)
    if finite:
        bad = np.flatnonzero(~np.isfinite(out))
        if len(bad):
            k = int(bad[0])
            raise TraceError(f"{name}: {values[k]!r} is not a finite number", path,
                             int(line_numbers[k]))
    return out


def parse_ints(values: Sequence[str], name: str, path: str, line_numbers: np.ndarray,
               minimum: int | None = 1, what: str = "token count") -> np.ndarray:
    """Integers (a float spelling such as `12.0` is accepted when integral)."""
    out = fast_parse(values, np.int64) if isinstance(values, list) else None
    try:
        if out is None:
            out = np.array(values, dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        as_float = parse_floats(values, name, path, line_numbers)
        frac = np.flatnonzero(as_float != np.round(as_float))
        if len(frac):
            k = int(frac[0])
            raise TraceError(f"{name}: {values[k]!r} is not a whole number", path,
                             int(line_numbers[k]))
        out = as_float.astype(np.int64)
    check_range(out, name, path, line_numbers, minimum, what)
    return out


def check_range(arr: np.ndarray, name: str, path: str, line_numbers: np.ndarray,
                minimum: int | None = 1, what: str = "token count") -> None:
    if minimum is not None:
        bad = np.flatnonzero(arr < minimum)
        if len(bad):
            k = int(bad[0])
            raise TraceError(f"{name}: {what} must be >= {minimum}, got {arr[k]}", path,
                             int(line_numbers[k]))
    big = np.flatnonzero(arr > np.iinfo(np.int32).max)
    if len(big):
        k = int(big[0])
        raise TraceError(f"{name}: {arr[k]} is too large", path, int(line_numbers[k]))


def arrival_order(arrival_s: np.ndarray, path: str, line_numbers: np.ndarray,
                  strict: bool) -> np.ndarray | None:
    """None when arrivals are already non-decreasing, else a stable sorting permutation.

    Unsorted input is sorted with a warning, or refused under `strict`.
    """
    back = np.flatnonzero(np.diff(arrival_s) < 0)
    if not len(back):
        return None
    k = int(back[0]) + 1
    msg = (f"timestamps not sorted: {arrival_s[k]:.6g} s comes after {arrival_s[k - 1]:.6g} s "
           f"({len(back)} backward step(s))")
    if strict:
        raise TraceError(msg + "; sort the file or drop --strict", path, int(line_numbers[k]))
    warn(msg + "; sorted by arrival time", path, int(line_numbers[k]))
    return np.argsort(arrival_s, kind="stable")


def file_meta(path: str, fmt: str, **extra) -> dict:
    """The `meta` every loader starts from: source, format, sha256 (DESIGN §2)."""
    import os

    from twinbench.traces.core import sha256_of_file

    meta = {"source": os.path.abspath(path), "format": fmt,
            "sha256": sha256_of_file(path) if os.path.isfile(path) else None,
            "transforms": [], "seed": None}
    meta.update(extra)
    return meta


def base_model_columns(n: int) -> np.ndarray:
    """`adapter_idx` for a trace without adapters: every request goes to the base model."""
    return np.full(n, -1, dtype=np.int32)
