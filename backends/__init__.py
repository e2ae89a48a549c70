"""Backends: one small async protocol for the real server and the twin (DESIGN §2)."""
from twinbench.backends.base import Backend, RecordSink, ReplayOptions, RunInfo

__all__ = ["Backend", "RecordSink", "ReplayOptions", "RunInfo"]
