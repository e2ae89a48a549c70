"""The user-facing error type every layer raises for problems a user can cause.

The CLI prints its message on one line and exits with `exit_code`, never a traceback.
"""
from __future__ import annotations


class TwinbenchError(Exception):
    exit_code = 2  # bad input or usage (DESIGN §3); checks that fail use 1

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class CheckFailed(TwinbenchError):
    """A check the user asked for did not pass (regression gate, fidelity bound)."""

    exit_code = 1


class TraceWarning(UserWarning):
    """Something a user should know about an input that was still accepted (e.g. resorted)."""


def warn(message: str, path: str | None = None, line: int | None = None) -> None:
    """Emit a `TraceWarning` whose text names the file and line like `TwinbenchError` does."""
    import warnings

    where = ""
    if path is not None:
        where = f"{path}:{line}: " if line is not None else f"{path}: "
    warnings.warn(TraceWarning(where + message), stacklevel=2)
