"""What a `twinbench serve` request asks for: parsing OpenAI/vLLM request bodies.

The twin generates no text, so a request reduces to (model, prompt length, output length,
streaming options, optional simulated arrival). Prompt length rules (docs/twin-server.md):
- `prompt` as a list of token ids: its length (vLLM's rule, no BOS added);
- `prompt` as text: the number of whitespace-separated words (one token per word, a
  deterministic stand-in for a tokenizer; `/tokenize` answers with the same count, so
  clients that fit text prompts through `/tokenize` get exact lengths);
- chat `messages`: the words of every message's text content, summed (no template tokens).
Output length: `max_tokens` (chat: `max_completion_tokens` first), the twin ignores EOS; a
request whose prompt + output exceeds `max_model_len` gets what fits, as vLLM 0.32 does;
no `max_tokens` means all that fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

TWIN_ARRIVAL_FIELD = "twin_arrival_s"   # request extension: simulated arrival (s, client clock)


class RequestError(Exception):
    """A request the server refuses; rendered as an OpenAI-style JSON error."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST,
                 err_type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = int(status)
        self.err_type = err_type
        self.param = param

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.err_type,
                          "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class CompletionAsk:
    model: str                    # as requested (base model name or adapter name)
    adapter: str | None           # None = base model
    prompt_tokens: int
    output_tokens: int
    stream: bool
    include_usage: bool
    chat: bool
    arrival_s: float | None       # `twin_arrival_s`, when the client gives it


def count_words(text: str) -> int:
    return len(text.split())


def _message_words(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    total = 0
    for m in messages:
        if not isinstance(m, dict):
            raise RequestError("each message must be an object", param="messages")
        content = m.get("content")
        if isinstance(content, str):
            total += count_words(content)
        elif isinstance(content, list):  # content parts: count the text ones
            total += sum(count_words(p.get("text", "")) for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
        elif content is not None:
            raise RequestError("message content must be a string or a list of parts",
                               param="messages")
    return total


def prompt_length(prompt: Any) -> int:
    """Tokens of a completions `prompt` (token ids, or text by the word rule)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return count_words(prompt)
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                        for t in prompt):
        return len(prompt)
    raise RequestError("'prompt' must be a string, a list of token ids, or a batch of one "
                       "(the twin serves one prompt per request)", param="prompt")


def _int_field(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RequestError(f"'{name}' must be an integer >= 1", param=name)
    return value


def parse_completion(body: Any, chat: bool, base_model: str, adapters: set[str],
                     max_model_len: int) -> CompletionAsk:
    """Validate a `/v1/completions` or `/v1/chat/completions` body (vLLM's rules)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model") or base_model
    if not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    if model != base_model and model not in adapters:
        raise RequestError(f"The model `{model}` does not exist. Valid aliases: {base_model}.",
                           HTTPStatus.NOT_FOUND, "NotFoundError", "model")
    n = body.get("n", 1)
    if n != 1:
        raise RequestError("the twin serves n=1 only", param="n")
    if chat:
        prompt = _message_words(body.get("messages"))
        requested = _int_field(body, "max_completion_tokens") or _int_field(body, "max_tokens")
    else:
        if "prompt" not in body:
            raise RequestError("'prompt' is required", param="prompt")
        prompt = prompt_length(body["prompt"])
        requested = _int_field(body, "max_tokens")
    if prompt < 1:
        raise RequestError("the prompt is empty (the twin needs at least one token)",
                           param="messages" if chat else "prompt")
    if prompt > max_model_len:
        raise RequestError(f"Input length ({prompt}) exceeds model's maximum context length "
                           f"({max_model_len}).", param="messages" if chat else "prompt")
    room = max_model_len - prompt
    output = room if requested is None else min(requested, room)
    if output < 1:
        raise RequestError(f"Input length ({prompt}) leaves no room for output tokens within "
                           f"the maximum context length ({max_model_len}).", param="max_tokens")
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    arrival = body.get(TWIN_ARRIVAL_FIELD)
    if arrival is not None and (not isinstance(arrival, (int, float)) or isinstance(arrival, bool)
                                or arrival < 0):
        raise RequestError(f"'{TWIN_ARRIVAL_FIELD}' must be a number >= 0",
                           param=TWIN_ARRIVAL_FIELD)
    return CompletionAsk(model=model, adapter=None if model == base_model else model,
                         prompt_tokens=prompt, output_tokens=output, stream=stream,
                         include_usage=stream and bool(options.get("include_usage")),
                         chat=chat, arrival_s=None if arrival is None else float(arrival))


def parse_tokenize(body: Any) -> int:
    """`/tokenize`: the prompt length the twin would count (same rules as completions)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if "messages" in body:
        return _message_words(body["messages"])
    if "prompt" in body:
        return prompt_length(body["prompt"])
    raise RequestError("'prompt' or 'messages' is required")
