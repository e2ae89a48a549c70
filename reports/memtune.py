"""Keep freed NumPy buffers for reuse instead of handing them back to the OS (glibc only).

Summaries of big runs allocate and free many arrays of hundreds of MB. By default glibc maps
each with mmap and unmaps it on free, so the next array page-faults all its memory in again;
on virtual machines that back memory lazily this costs seconds of system time per GB
(bench/summary_scale.py: a repeated 200k-record summary went from 49.6 s to 8.7 s wall,
3.9 s to 0.06 s system CPU). Called by the report commands for their own process only.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def reuse_freed_memory() -> bool:
    """Serve large allocations from the heap and do not trim it; False if not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
