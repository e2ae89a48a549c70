"""What one streamed OpenAI-compatible request reads, message by message, into its `Attempt`.

Shared by both HTTP clients (`openai_stream` over aiohttp, `fast_stream` over `http1`), so the
rules and the error texts exist once. Timing follows vLLM's `bench serve` (DESIGN §3): each
message whose `choices` is non-empty gets one `perf_counter()` stamp (empty text counts); the
final `choices: []` message carries `usage`. Every failure becomes a status and a message on
the attempt.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import orjson

from twinbench.backends.sse import SSEParser
from twinbench.replay.dispatch import Attempt

MAX_ERROR_BODY = 500  # characters of an error body kept in a record

_clock = time.perf_counter
_loads = orjson.loads  # ~6x faster than json.loads per message (the client's hot path)


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


class StreamState:
    """Feed it the response body as it arrives; it fills the attempt."""

    __slots__ = ("attempt", "chat", "parser", "over", "finish_reason", "_last_completion",
                 "_twin_times")

    def __init__(self, attempt: Attempt, chat: bool):
        self.attempt = attempt
        self.chat = chat
        self.parser = SSEParser()
        self.over = False                 # [DONE], bad data or a server error was read
        self.finish_reason: str | None = None
        self._last_completion = 0         # cumulative completion_tokens seen (continuous usage)
        self._twin_times: list = []       # `twinbench serve`: simulated time of each chunk (ns)

    def feed(self, chunk: bytes) -> bool:
        """Read one piece of the body; True once the stream is over (nothing more to read)."""
        try:
            return self._feed(chunk)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
            # valid JSON of the wrong shape (`choices` an object, `usage` a list, ...)
            return self.fail(f"malformed SSE data (unexpected shape: {type(e).__name__}: "
                             f"{str(e)[:120]})")

    def _feed(self, chunk: bytes) -> bool:
        attempt = self.attempt
        for _event, data in self.parser.feed(chunk):
            if data == b"[DONE]":
                attempt.status = "ok"
                self.over = True
                return True
            try:
                msg = _loads(data)
            except ValueError:
                return self.fail(f"malformed SSE data (not JSON): {data[:120]!r}")
            if not isinstance(msg, dict):
                return self.fail(f"malformed SSE data (not an object): {data[:120]!r}")
            choices = msg.get("choices")
            usage = msg.get("usage")
            if choices:
                attempt.stamps.append(_clock())
                twin = msg.get("twin")
                if twin is not None:
                    self._twin_times.append(twin.get("t_ns") if isinstance(twin, dict) else None)
                if usage and usage.get("completion_tokens") is not None:
                    n = int(usage["completion_tokens"]) - self._last_completion
                    self._last_completion = int(usage["completion_tokens"])
                elif self.chat and _role_only(choices[0]):
                    n = 0  # the assistant-role announcement carries no token
                else:
                    n = 1
                attempt.tokens.append(n)
                fr = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
                if fr:
                    self.finish_reason = fr
            elif usage:
                twin = msg.get("twin")
                if isinstance(twin, dict):  # the twin's own account of the request
                    attempt.extra["twin"] = {**twin, "chunk_times_ns": self._twin_times}
                if usage.get("completion_tokens") is not None:
                    attempt.output_tokens = int(usage["completion_tokens"])
                if usage.get("prompt_tokens") is not None:
                    attempt.extra["server_prompt_tokens"] = int(usage["prompt_tokens"])
            if "error" in msg and not choices:  # vLLM reports engine errors in-stream
                err = msg["error"]
                return self.fail("server error in stream: " + str(
                    err.get("message", err) if isinstance(err, dict) else err)[:MAX_ERROR_BODY])
        return False

    # ---- endings (one wording for both clients) ---------------------------------------------
    def fail(self, error: str, status: str = "error") -> bool:
        self.attempt.status = status
        self.attempt.error = error
        self.over = True
        return True

    def ended(self) -> None:
        """The body ended; without [DONE] that is an error."""
        if not self.over:
            self.fail(f"stream ended without [DONE] after {len(self.attempt.stamps)} chunks"
                      + (" (cut mid-event)" if self.parser.pending else ""))

    def http_error(self, status: int, body: bytes) -> None:
        self.fail(error_text(status, body))

    def cannot_connect(self, err: object) -> None:
        self.fail(f"cannot connect: {err}")

    def broken(self, exc: BaseException) -> None:
        self.fail(f"stream broken after {len(self.attempt.stamps)} chunks: "
                  f"{type(exc).__name__}: {exc}")

    def timed_out(self, timeout_s: float) -> None:
        self.fail(f"no complete response within {timeout_s:g} s (request timeout); "
                  f"{len(self.attempt.stamps)} chunks received", status="timeout")

    def note_cut_short(self, requested: int) -> None:
        """Status stays ok; a short output is noted in `extra` and counted by the backend."""
        attempt = self.attempt
        if attempt.status != "ok":
            return
        if attempt.output_tokens is None:
            attempt.output_tokens = int(sum(attempt.tokens))
            attempt.extra["output_tokens_from"] = "chunks"
        elif sum(attempt.tokens) != attempt.output_tokens:
            attempt.extra["chunk_tokens_estimated"] = True
        if attempt.output_tokens < requested:
            attempt.extra["cut_short"] = {"output_tokens": attempt.output_tokens,
                                          "requested": requested,
                                          "finish_reason": self.finish_reason}


def _role_only(choice: object) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    return isinstance(delta, dict) and "role" in delta and not delta.get("content")
