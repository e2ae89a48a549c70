"""Request streams: the `Request` / `Trace` types, loaders, generators and transforms."""
from twinbench.traces.core import Adapter, Request, Trace, TraceError

__all__ = ["Adapter", "Request", "Trace", "TraceError"]
