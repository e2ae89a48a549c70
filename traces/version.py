"""twinbench's version, read once from the installed package metadata (pyproject.toml).

It lives in the lowest layer so that every part (run files, the twin, the HTTP server, the CLI)
reports the same version without importing layers above it."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    TOOL_VERSION = version("twinbench")
except PackageNotFoundError:  # running from a checkout that was never installed
    TOOL_VERSION = "0+unknown"
