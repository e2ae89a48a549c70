"""One streamed OpenAI-compatible request: send, parse SSE, stamp every token-bearing message.

Timing follows vLLM's `bench serve` (DESIGN §3): `sent` is read just before the request goes
out, and each message whose `choices` is non-empty gets one `perf_counter()` stamp (empty text
counts). The final `choices: []` message carries `usage`. Every failure becomes a status and a
message on the attempt, never an exception out of `send`.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Callable

import aiohttp
import orjson

from twinbench.backends.sse import SSEParser
from twinbench.replay.dispatch import Attempt

MAX_ERROR_BODY = 500  # characters of an error body kept in a record


@dataclass(frozen=True)
class StreamTarget:
    url: str                         # full endpoint URL
    headers: dict[str, str]          # includes Authorization when a key is set (never logged)
    timeout_s: float
    chat: bool


def error_text(status: int, body: bytes) -> str:
    """`HTTP 404: <message>` from an OpenAI/vLLM error body (JSON or plain)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif isinstance(err, str):
            text = err
    except ValueError:
        pass
    return f"HTTP {status}: {text[:MAX_ERROR_BODY]}" if text else f"HTTP {status}"


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
        finish_reason: str | None = None
        try:
            attempt.sent = time.perf_counter()
            async with self.session.post(self.target.url, data=body, headers=self.target.headers,
                                         timeout=self._timeout) as resp:
                if resp.status != 200:
                    attempt.status = "error"
                    attempt.error = error_text(resp.status, await resp.content.read(4096))
                    return
                finish_reason = await self._read_stream(resp, attempt)
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            attempt.status = "timeout"
            attempt.error = (f"no complete response within {self.target.timeout_s:g} s "
                             f"(request timeout); {len(attempt.stamps)} chunks received")
            return
        except aiohttp.ClientConnectorError as e:
            attempt.status = "error"
            attempt.error = f"cannot connect: {e.os_error or e}"
            return
        except aiohttp.ClientPayloadError as e:
            attempt.status = "error"
            attempt.error = (f"stream broken after {len(attempt.stamps)} chunks: "
                             f"{type(e).__name__}: {e}")
            return
        except (aiohttp.ClientError, OSError) as e:
            attempt.status = "error"
            attempt.error = f"{type(e).__name__}: {e}"
            return
        if attempt.status == "ok":
            self._note_cut_short(row, attempt, finish_reason)

    async def _read_stream(self, resp: aiohttp.ClientResponse, attempt: Attempt) -> str | None:
        parser = SSEParser()
        loads = orjson.loads  # ~6x faster than json.loads per message (the client's hot path)
        clock = time.perf_counter
        stamps, tokens = attempt.stamps, attempt.tokens
        chat = self.target.chat
        last_completion = 0       # cumulative completion_tokens seen (continuous usage)
        finish_reason = None
        twin_times: list[int] = []  # `twinbench serve`: simulated time of each chunk (ns)
        async for chunk in resp.content.iter_any():
            for _event, data in parser.feed(chunk):
                if data == b"[DONE]":
                    attempt.status = "ok"
                    return finish_reason
                try:
                    msg = loads(data)
                except ValueError:
                    attempt.status = "error"
                    attempt.error = f"malformed SSE data (not JSON): {data[:120]!r}"
                    return None
                if not isinstance(msg, dict):
                    attempt.status = "error"
                    attempt.error = f"malformed SSE data (not an object): {data[:120]!r}"
                    return None
                choices = msg.get("choices")
                usage = msg.get("usage")
                if choices:
                    stamps.append(clock())
                    twin = msg.get("twin")
                    if twin is not None:
                        twin_times.append(twin.get("t_ns") if isinstance(twin, dict) else None)
                    if usage and usage.get("completion_tokens") is not None:
                        n = int(usage["completion_tokens"]) - last_completion
                        last_completion = int(usage["completion_tokens"])
                    elif chat and _role_only(choices[0]):
                        n = 0  # the assistant-role announcement carries no token
                    else:
                        n = 1
                    tokens.append(n)
                    fr = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
                    if fr:
                        finish_reason = fr
                elif usage:
                    twin = msg.get("twin")
                    if isinstance(twin, dict):  # the twin's own account of the request
                        attempt.extra["twin"] = {**twin, "chunk_times_ns": twin_times}
                    if usage.get("completion_tokens") is not None:
                        attempt.output_tokens = int(usage["completion_tokens"])
                    if usage.get("prompt_tokens") is not None:
                        attempt.extra["server_prompt_tokens"] = int(usage["prompt_tokens"])
                if "error" in msg and not choices:  # vLLM reports engine errors in-stream
                    err = msg["error"]
                    attempt.status = "error"
                    attempt.error = "server error in stream: " + str(
                        err.get("message", err) if isinstance(err, dict) else err)[:MAX_ERROR_BODY]
                    return None
        attempt.status = "error"
        attempt.error = (f"stream ended without [DONE] after {len(stamps)} chunks"
                         + (" (cut mid-event)" if parser.pending else ""))
        return None

    def _note_cut_short(self, row: int, attempt: Attempt, finish_reason: str | None) -> None:
        """Status stays ok; a short output is noted in `extra` and counted by the backend."""
        if attempt.output_tokens is None:
            attempt.output_tokens = int(sum(attempt.tokens))
            attempt.extra["output_tokens_from"] = "chunks"
        elif sum(attempt.tokens) != attempt.output_tokens:
            attempt.extra["chunk_tokens_estimated"] = True
        requested = self.requested_of(row)
        if attempt.output_tokens < requested:
            attempt.extra["cut_short"] = {"output_tokens": attempt.output_tokens,
                                          "requested": requested,
                                          "finish_reason": finish_reason}


def _role_only(choice: object) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    return isinstance(delta, dict) and "role" in delta and not delta.get("content")
