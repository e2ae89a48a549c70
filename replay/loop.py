"""The event loop a wall-clock replay runs on: I/O handled in bounded batches.

asyncio runs every callback of the sockets one `epoll_wait` returned before it looks at its
timers. Against a server that writes one SSE message to every running stream per engine step,
one wait can return a thousand readable sockets; at ~25 us of client CPU each, the dispatcher's
timer (the next request's send time) then waits 25+ ms behind them, and that is dispatch lag.
Capping the events of one wait at `MAX_EVENTS` lets the timers run between batches: sockets
left out stay readable (epoll is level-triggered) and come first in the next wait, so no
stream is starved and the token stamps are what they would be (each read is stamped when it is
handled, in either case). The extra `epoll_wait` calls cost ~0.3 us per message. At 500 req/s
of 64-token streams (`bench/client_overhead.py`, one worker), dispatch-lag p99: 12 events
4.9-7.0 ms over 5 runs (max 12-15 ms), 32 events 3.9-15.5 ms over 9 runs (max 9-33 ms),
6 events 8.5 and 13.5 ms (2 runs).

Where epoll is missing (not Linux) or its internals differ, the default loop is used.
"""
from __future__ import annotations

import asyncio
import math
import select
import selectors
import sys
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

MAX_EVENTS = 12  # ~0.4 ms of stream reads between two looks at the timers


class BoundedEpollSelector(selectors.EpollSelector):
    """`EpollSelector` returning at most `max_events` ready file objects per `select()`."""

    def __init__(self, max_events: int = MAX_EVENTS):
        super().__init__()
        self.max_events = max_events

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            timeout = math.ceil(timeout * 1e3) * 1e-3  # epoll counts in ms: never wake early
        try:
            fired = self._selector.poll(timeout, self.max_events)
        except InterruptedError:
            return []
        keys = self._fd_to_key
        ready = []
        for fd, mask in fired:
            key = keys.get(fd)
            if key is None:
                continue
            events = 0
            if mask & ~select.EPOLLIN:   # error or hang-up: wake writers too
                events |= selectors.EVENT_WRITE
            if mask & ~select.EPOLLOUT:  # the same for readers
                events |= selectors.EVENT_READ
            ready.append((key, events & key.events))
        return ready


def _bounded_selector_works() -> bool:
    probe = getattr(selectors, "EpollSelector", None)
    if probe is None:
        return False
    sel = probe()
    try:
        return hasattr(sel, "_selector") and hasattr(sel, "_fd_to_key")
    finally:
        sel.close()


def new_loop() -> asyncio.AbstractEventLoop:
    """A selector loop with bounded I/O batches where possible, else the default loop."""
    if _bounded_selector_works():
        return asyncio.SelectorEventLoop(BoundedEpollSelector())
    return asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` on `new_loop()` (Python 3.11+; 3.10 uses the default loop)."""
    if sys.version_info < (3, 11):
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)
