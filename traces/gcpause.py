"""Pause Python's cyclic garbage collector around allocation-heavy work.

Bulk work here (reading a million-record run file, simulating a trace) allocates millions of
short-lived objects while keeping millions alive. Each allocation burst triggers the
collector, whose older-generation passes walk every live object and find no cycles (the data
structures are acyclic), so they are pure overhead. Reference counting still frees everything;
cycles, if any, are collected after the pause.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
