"""One streamed OpenAI-compatible request over aiohttp: send, read the stream, stamp messages.

The fallback client when `httptools` is missing (see `fast_stream` for the default one); what
is read from the stream and every error text come from `stream_state.StreamState`. `sent` is
read just before the request goes out (connection set-up included, as in vLLM's `bench serve`).
Every failure becomes a status and a message on the attempt, never an exception out of `send`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

import aiohttp

from twinbench.backends.stream_state import StreamState, StreamTarget
from twinbench.replay.dispatch import Attempt


class OpenAIStreamSender:
    """Implements `replay.dispatch.Sender` over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, target: StreamTarget,
                 body_of: Callable[[int], bytes], requested_of: Callable[[int], int]):
        self.session = session
        self.target = target
        self.body_of = body_of
        self.requested_of = requested_of
        self._timeout = aiohttp.ClientTimeout(total=target.timeout_s)

    async def send(self, row: int, attempt: Attempt) -> None:
        body = self.body_of(row)
        state = StreamState(attempt, self.target.chat)
        try:
            attempt.sent = time.perf_counter()
            async with self.session.post(self.target.url, data=body, headers=self.target.headers,
                                         timeout=self._timeout) as resp:
                if resp.status != 200:
                    state.http_error(resp.status, await resp.content.read(4096))
                    return
                async for chunk in resp.content.iter_any():
                    if state.feed(chunk):
                        break
                else:
                    state.ended()
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            state.timed_out(self.target.timeout_s)
            return
        except aiohttp.ClientConnectorError as e:
            state.cannot_connect(e.os_error or e)
            return
        except aiohttp.ClientPayloadError as e:
            state.broken(e)
            return
        except (aiohttp.ClientError, OSError) as e:
            state.fail(f"{type(e).__name__}: {e}")
            return
        state.note_cut_short(self.requested_of(row))
