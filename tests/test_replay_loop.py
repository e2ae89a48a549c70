"""The replay's event loop: bounded I/O batches, every ready socket served in turn."""
from __future__ import annotations

import asyncio
import selectors
import socket

import pytest

from twinbench.replay import loop as event_loop

pytestmark = pytest.mark.skipif(not hasattr(selectors, "EpollSelector"), reason="needs epoll")


def test_at_most_max_events_per_select_and_none_left_behind():
    pairs = [socket.socketpair() for _ in range(100)]
    sel = event_loop.BoundedEpollSelector(max_events=32)
    try:
        for a, b in pairs:
            b.send(b"x")
            sel.register(a, selectors.EVENT_READ)
        served = set()
        rounds = 0
        while len(served) < len(pairs):
            ready = sel.select(0)
            assert 0 < len(ready) <= 32
            for key, events in ready:
                assert events == selectors.EVENT_READ
                assert key.fileobj.recv(1) == b"x"  # now drained: not ready again
                served.add(key.fileobj.fileno())
            rounds += 1
        assert rounds == 4  # 32 + 32 + 32 + 4
        assert sel.select(0) == []
    finally:
        sel.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_timers_run_between_batches_of_ready_sockets():
    # 200 readable sockets whose callbacks each take ~0.5 ms: with the default loop a timer
    # due meanwhile waits for all of them (~100 ms); on the replay's loop it runs after the
    # next batch
    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        pairs = [socket.socketpair() for _ in range(200)]
        handled = 0

        def on_readable(sock: socket.socket) -> None:
            nonlocal handled
            sock.recv(1)
            loop.remove_reader(sock)
            handled += 1
            t = loop.time() + 0.0005
            while loop.time() < t:
                pass

        for a, b in pairs:
            loop.add_reader(a, on_readable, a)
            b.send(b"x")  # readable from now on
        fired = loop.create_future()
        loop.call_later(0.0005, lambda: fired.set_result(handled))
        seen = await fired
        while handled < len(pairs):
            await asyncio.sleep(0.001)
        for a, b in pairs:
            a.close()
            b.close()
        return seen, handled

    seen, total = event_loop.run(scenario())
    assert total == 200
    assert seen <= 2 * event_loop.MAX_EVENTS
    seen, total = asyncio.run(scenario())  # the default loop: the timer waits for them all
    assert total == 200 and seen == 200
