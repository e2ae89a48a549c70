"""When Python's cyclic garbage collector may run: paused around allocation-heavy work, and no
full collection while timing matters.

Bulk work here (reading a million-record run file, simulating a trace) allocates millions of
short-lived objects while keeping millions alive. Each allocation burst triggers the
collector, whose older-generation passes walk every live object and find no cycles (the data
structures are acyclic), so they are pure overhead. Reference counting still frees everything;
cycles, if any, are collected after the pause.
"""
from __future__ import annotations

import asyncio
import gc
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

FULL_GC_OFF = 1 << 30  # threshold of the oldest generation that is never reached


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """No full garbage collection inside the block; the young generations still collect.

    A full collection scans every tracked object, and a replay keeps many alive (attempts in
    flight, their stamps, the plan): mid-run one took 17-100 ms, a stall that shows as
    dispatch lag (one such pause puts ~1 % of a 500 req/s run 20-100 ms late). What exists
    before the block is frozen (left out of every scan) and the oldest generation's threshold
    is lifted; cycles that survive the young collections wait for the end, when the threshold
    and the frozen objects are put back and one full collection runs (a replay makes almost no
    cycles: 3,000 requests at 500 req/s with collection off left 8 objects)."""
    thresholds = _freeze_without_full_collections()
    try:
        yield
    finally:
        _restore(thresholds)
        gc.collect()


def _freeze_without_full_collections() -> tuple[int, int, int]:
    """Collect, freeze what is left, lift the oldest generation's threshold; returns the
    thresholds to put back."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], FULL_GC_OFF)
    return thresholds


def _restore(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(*thresholds)
    gc.unfreeze()


class IdleFullCollections:
    """For a long-running server that must keep time (`twinbench serve`): full collections
    only while it is idle, or at the latest every `max_defer_s` under continuous load.

    Under load a full collection of the served twin (thousands of streams and engine requests
    alive) took 48-135 ms; no token is streamed meanwhile. The start-up heap is frozen, the
    oldest generation's automatic collection is off, and a check every `check_s` collects
    fully once the young collections have promoted as much as would have triggered a full
    collection by default and `is_idle()` held at two checks in a row (so that a collection
    rarely meets the first requests of a run). `max_defer_s` counts continuous busy time.
    Python 3.14's incremental collector has no long full pass to defer: there the policy
    leaves the collector as it is."""

    def __init__(self, is_idle: Callable[[], bool], check_s: float = 1.0,
                 max_defer_s: float = 300.0):
        self.is_idle = is_idle
        self.check_s = check_s
        self.max_defer_s = max_defer_s
        self.full_collections = 0
        self._idle_checks = 0
        self._thresholds: tuple[int, int, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy_since = time.monotonic()

    def start(self) -> None:
        if sys.version_info >= (3, 14):  # incremental: the third threshold is not used
            return
        self._thresholds = _freeze_without_full_collections()
        self._busy_since = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(self.check_s, self._check)

    def _check(self) -> None:
        try:
            now = time.monotonic()
            idle = self.is_idle()
            self._idle_checks = self._idle_checks + 1 if idle else 0
            promoted = gc.get_count()[2]
            due = promoted >= self._thresholds[2]
            if (due and self._idle_checks >= 2) or (
                    promoted and now - self._busy_since >= self.max_defer_s):
                gc.collect()
                self.full_collections += 1
                self._busy_since = now
            elif idle:
                self._busy_since = now  # the limit counts busy time only
        finally:
            self._timer = asyncio.get_running_loop().call_later(self.check_s, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._thresholds is not None:
            _restore(self._thresholds)
            self._thresholds = None
