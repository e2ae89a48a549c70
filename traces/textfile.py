"""Reading trace files as text with errors that name the file and line.

Binary junk, bad encodings and empty files are reported here once, so every text loader
gets the same one-line messages.
"""
from __future__ import annotations

import os

from twinbench.traces.core import TraceError

SNIFF_BYTES = 64 * 1024


def line_of_offset(data: bytes, offset: int) -> int:
    """1-based line number of a byte offset."""
    return data.count(b"\n", 0, offset) + 1


def check_text_bytes(data: bytes, path: str, first_line: int = 1) -> None:
    """Raise if `data` holds NUL bytes or is not UTF-8 (binary junk, wrong file)."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise TraceError("binary data (NUL byte), not a text trace",
                         path, first_line - 1 + line_of_offset(data, nul))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the sniff boundary is not an error
        if e.start < len(data) - 4 or e.reason != "unexpected end of data":
            raise TraceError(f"not UTF-8 text (byte 0x{data[e.start]:02x}); binary junk?",
                             path, first_line - 1 + line_of_offset(data, e.start)) from None


def sniff(path: str) -> bytes:
    """The first bytes of a file, for format detection; empty files are an error."""
    if os.path.isdir(path):
        raise TraceError("is a directory, not a trace file", path)
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise TraceError("no such file", path) from None
    except OSError as e:
        raise TraceError(f"cannot read: {e.strerror}", path) from None
    if not head.strip():
        raise TraceError("empty file, no header or requests", path, 1)
    return head


def read_lines(path: str) -> list[str]:
    """All lines of a small text file, without line endings (CRLF or LF).

    `lines[i]` is file line i+1. A trailing newline does not add an empty line.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TraceError("no such file", path) from None
    except OSError as e:
        raise TraceError(f"cannot read: {e.strerror}", path) from None
    if not data.strip():
        raise TraceError("empty file, no header or requests", path, 1)
    check_text_bytes(data, path)
    text = data.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def first_content_line(lines: list[str]) -> int:
    """Index of the first non-blank line."""
    for i, ln in enumerate(lines):
        if ln.strip():
            return i
    return len(lines)
