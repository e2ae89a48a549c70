"""One streamed OpenAI-compatible request over `http1`: the default client of a replay.

Why not aiohttp on this path: per SSE message aiohttp's reader parses the read, feeds a
StreamReader, sets a future and wakes the request's task, which then returns one chunk from
`iter_any()`. Here the read callback parses the HTTP response (httptools) and the SSE events
(`StreamState.feed`) and stamps each message in place; the request's coroutine only awaits the
end of the stream. Measured on the 2-core development VM, client pinned to one core, server
to the other, default asyncio loop:

    loopback server, vLLM-shaped 64-message streams, one write per message, 10-20k msg/s
      aiohttp session + iter_any + SSEParser + orjson     46-58 us of CPU per message
      this client                                          26-31 us per message
      the loop's read callback + httptools alone           ~21 us (the floor of any client)
      with uvloop: this client ~24, the floor ~17, aiohttp 38-58
    bench/client_overhead.py against `twinbench serve`, 500 req/s, one worker
      aiohttp: 44 us/msg, client 71 % of a core, dispatch lag p99 151 ms
      this client: 34 us/msg, 53 % of a core, p99 67 ms; with `gcpause.frozen_heap`
      p99 13-21 ms, where aiohttp stays at 180 ms in the same conditions

The lag left comes from bursts: the server writes one message per running stream per engine
step, and a loop iteration that reads 1,000+ sockets holds back the dispatcher until it ends.

A protocol that takes whole reads (`data_received`) rather than filling a buffer cost up to
twice the system time: asyncio then reads with a 256 KiB `recv`, which glibc may serve with
an mmap/munmap pair per read.

Contract and error texts are those of `openai_stream.OpenAIStreamSender` (`StreamState`
holds both). `sent` is read before a connection is taken or opened, as there (vLLM's
`bench serve` counts connection set-up in TTFT too).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Coroutine

from httptools import HttpParserError

from twinbench.backends.http1 import (Connection, ConnectionPool, ResponseIncompleteError,
                                      request_head)
from twinbench.backends.stream_state import StreamState, StreamTarget
from twinbench.replay.dispatch import Attempt


class FastStreamSender:
    """Implements `replay.dispatch.Sender` over one `http1.ConnectionPool`."""

    def __init__(self, pool: ConnectionPool, target: StreamTarget,
                 body_of: Callable[[int], bytes], requested_of: Callable[[int], int]):
        self.pool = pool
        self.target = target
        self.body_of = body_of
        self.requested_of = requested_of
        self._head = request_head(pool.endpoint, target.headers)

    def begin(self, row: int, attempt: Attempt) -> Coroutine[Any, Any, None]:
        """Stamp `sent` and, when an idle keep-alive connection is at hand, write the request
        now; the coroutine returned does the rest. The dispatcher calls this from its timer,
        so no loop turn (a dozen stream reads) comes between the due time and the write."""
        data = self.body_of(row)
        data = self._head + b"%d\r\n\r\n" % len(data) + data
        state = StreamState(attempt, self.target.chat)
        attempt.sent = time.perf_counter()
        conn = self.pool.take()
        waiter = None if conn is None else conn.request(data, state.feed)
        return self._complete(row, attempt, state, data, conn, waiter)

    async def send(self, row: int, attempt: Attempt) -> None:
        await self.begin(row, attempt)

    async def _complete(self, row: int, attempt: Attempt, state: StreamState, data: bytes,
                        conn: Connection | None, waiter: asyncio.Future | None) -> None:
        timeout_s = self.target.timeout_s
        timer = None
        keep = False
        try:
            if conn is None:
                try:
                    conn = await asyncio.wait_for(self.pool.connect(), timeout_s)
                except (asyncio.TimeoutError, TimeoutError):
                    raise  # TimeoutError is an OSError: recorded as a timeout below, not here
                except OSError as e:
                    state.cannot_connect(e)
                    return
                waiter = conn.request(data, state.feed)
            assert waiter is not None and attempt.sent is not None
            left = attempt.sent + timeout_s - time.perf_counter()
            timer = self.pool.loop.call_later(max(0.0, left), _expire, waiter)
            await waiter
            if conn.status != 200:
                state.http_error(conn.status, bytes(conn.error_body))
                keep = conn.complete
                return
            state.ended()  # no-op after [DONE] or a failure; else the body ended without one
            keep = attempt.status == "ok"
        except (asyncio.TimeoutError, TimeoutError):
            state.timed_out(timeout_s)
            return
        except ResponseIncompleteError as e:
            state.broken(e)
            return
        except (OSError, HttpParserError) as e:  # closed, reset, or not HTTP
            state.fail(f"{type(e).__name__}: {e}")
            return
        finally:
            if timer is not None:
                timer.cancel()
            if conn is not None:
                conn.finish(keep)
        state.note_cut_short(self.requested_of(row))


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
