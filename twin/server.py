"""`twinbench serve`: the twin behind an OpenAI-compatible HTTP server that answers like vLLM.

Endpoints (vLLM 0.32's shapes): `/v1/completions` and `/v1/chat/completions` (streaming or
not, `stream_options.include_usage`), `/v1/models`, `/v1/load_lora_adapter`,
`/v1/unload_lora_adapter`, `/tokenize`, `/health`, `/version`, `/metrics`. Errors are
OpenAI-style JSON (`{"error": {"message", "type", "param", "code"}}`); an unknown model or
adapter is a 404. Every response carries the twin's simulated times in a `twin` field (the
way vLLM adds its own fields); see docs/twin-server.md.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from twinbench.twin.config import ServerConfig
from twinbench.twin.profile import Profile
from twinbench.twin.server_metrics import ServerMetrics
from twinbench.twin.server_requests import (CompletionAsk, RequestError, parse_completion,
                                            parse_tokenize)
from twinbench.twin.server_sim import RealtimeTwin, RequestRefused, SimRequest
from twinbench.traces.version import TOOL_VERSION

TOKEN_TEXT = " x"  # the twin generates no language: every token is this text
LISTEN_BACKLOG = 4096  # pending connections (the kernel caps it at net.core.somaxconn)


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    path: str | None
    rank: int


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    speed: float = 1.0                     # simulated seconds per wall second
    served_model_name: str | None = None   # default: the profile's model name
    adapters: list[AdapterEntry] = field(default_factory=list)
    max_request_bytes: int = 8 * 2**20     # bodies larger than this get a 413
    max_pending_requests: int = 10_000     # requests in the twin at once; more get a 503
    slack_s: float = 0.25                  # client-clock epochs run this far behind
    record_path: str | None = None         # JSON Lines: one line per finished request


def adapter_rank(path: str, default: int) -> int:
    """The LoRA rank from a PEFT adapter folder's `adapter_config.json` (`r`), else default."""
    try:
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            return int(json.load(f).get("r", default))
    except (OSError, ValueError, TypeError, AttributeError):
        return default


def _refusal(ev: RequestRefused) -> RequestError:
    return RequestError(ev.message, ev.status, "ServiceUnavailableError" if ev.status == 503
                        else "BadRequestError")


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj, separators=(",", ":")).encode(), status=status,
                        content_type="application/json")


def error_response(err: RequestError) -> web.Response:
    return json_response(err.to_json(), err.status)


class TwinServer:
    """State of one served twin: the real-time engine, adapters, metrics, the aiohttp app."""

    def __init__(self, config: ServerConfig, profile: Profile | str,
                 options: ServeOptions | None = None):
        from twinbench.twin.engine import Engine

        self.config = config
        self.profile = Profile.load(profile)
        self.options = options or ServeOptions()
        probe = Engine(config, self.profile)  # validates the config, resolves KV capacity
        self.max_model_len = int(probe.max_model_len)
        self.num_gpu_blocks = int(probe.num_gpu_blocks)
        self.model_name = self.options.served_model_name or self.profile.data["model"]["name"]
        self.adapters: dict[str, AdapterEntry] = {}
        if self.options.adapters and not config.enable_lora:
            raise RequestError("adapters need LoRA enabled (drop --no-enable-lora)")
        for entry in self.options.adapters:
            self._check_rank(entry)
            self.adapters[entry.name] = entry
        self.created = int(time.time())
        self.twin: RealtimeTwin | None = None
        self.metrics: ServerMetrics | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._record = None

    def _request_finished(self, sim: SimRequest) -> None:
        self.metrics.request_finished(sim)
        if self._record is not None:
            line = {"id": sim.request_id, "model": sim.model, "adapter": sim.adapter,
                    "prompt_tokens": sim.prompt_tokens, **sim.twin_summary(),
                    "token_times_ns": sim.token_times_ns}
            self._record.write(json.dumps(line, separators=(",", ":")) + "\n")

    def _check_rank(self, entry: AdapterEntry) -> None:
        if entry.rank > self.config.max_lora_rank:
            raise RequestError(f"LoRA rank {entry.rank} of '{entry.name}' is greater than "
                               f"max_lora_rank {self.config.max_lora_rank}.")

    # ---- lifecycle ---------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        from twinbench.twin.engine import Engine

        loop = asyncio.get_running_loop()
        # adapters registered in catalog order, as `twin.simulate` does with a trace's
        self.twin = RealtimeTwin(lambda: Engine(self.config, self.profile, adapter_ranks={
                                     a.name: a.rank for a in self.adapters.values()}),
                                 speed=self.options.speed, slack_s=self.options.slack_s,
                                 loop=loop)
        self.metrics = ServerMetrics(self.twin, self.model_name, self.cache_info(),
                                     self.config.max_loras)
        self.twin.on_finish = self._request_finished
        if self.options.record_path:
            self._record = open(self.options.record_path, "a", encoding="utf-8", buffering=1)
        app = web.Application(client_max_size=self.options.max_request_bytes,
                              middlewares=[self._errors_as_json])
        r = app.router
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.models)
        r.add_post("/v1/load_lora_adapter", self.load_adapter)
        r.add_post("/v1/unload_lora_adapter", self.unload_adapter)
        r.add_post("/tokenize", self.tokenize)
        r.add_get("/health", self.health)
        r.add_get("/version", self.version)
        r.add_get("/metrics", self.prometheus)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self) -> int:
        """Listen on (host, port); returns the port (useful with port 0)."""
        self.runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False,
                                    shutdown_timeout=5.0)
        await self.runner.setup()
        # a replay opens a connection per request in flight (thousands at high rates); the
        # default backlog of 128 overflowed, and a dropped SYN costs the client 1 s
        site = web.TCPSite(self.runner, self.options.host, self.options.port,
                           backlog=LISTEN_BACKLOG)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # noqa: SLF001
        self.port = sockets[0].getsockname()[1] if sockets else self.options.port
        return self.port

    async def stop(self) -> None:
        if self.twin is not None:
            self.twin.close()  # in-flight requests end now, not after their last token
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _on_shutdown(self, app: web.Application) -> None:
        if self.twin is not None:
            self.twin.close()
        if self._record is not None:
            self._record.close()
            self._record = None

    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler):
        try:
            return await handler(request)
        except RequestError as e:
            return error_response(e)
        except web.HTTPRequestEntityTooLarge:
            return error_response(RequestError(
                f"request body larger than {self.options.max_request_bytes} bytes",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE))
        except web.HTTPNotFound:
            return error_response(RequestError(f"no route {request.path}", HTTPStatus.NOT_FOUND,
                                               "NotFoundError"))
        except web.HTTPMethodNotAllowed:
            return error_response(RequestError(f"{request.method} not allowed on "
                                               f"{request.path}", HTTPStatus.METHOD_NOT_ALLOWED))

    # ---- facts ---------------------------------------------------------------------------
    def cache_info(self) -> dict[str, Any]:
        """`vllm:cache_config_info` labels (vLLM's CacheConfig field names)."""
        c = self.config
        return {"block_size": c.block_size, "num_gpu_blocks": self.num_gpu_blocks,
                "num_cpu_blocks": "None", "enable_prefix_caching": c.enable_prefix_caching,
                "cache_dtype": "auto",
                "gpu_memory_utilization": c.gpu_memory_utilization
                or self.profile.data["memory"]["gpu_memory_utilization"]}

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError as e:
            raise RequestError(f"the request body is not valid JSON: {e}") from None

    # ---- completions ---------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._body(request)
        ask = parse_completion(body, chat, self.model_name, set(self.adapters),
                               self.max_model_len)
        if len(self.twin.active) >= self.options.max_pending_requests:
            raise RequestError(f"the twin holds {self.options.max_pending_requests} requests "
                               "(--max-pending-requests); try again later",
                               HTTPStatus.SERVICE_UNAVAILABLE, "ServiceUnavailableError")
        rank = self.adapters[ask.adapter].rank if ask.adapter else None
        sim = self.twin.submit(ask.model, ask.adapter, rank, ask.prompt_tokens,
                               ask.output_tokens, ask.arrival_s,
                               prefix="chatcmpl" if chat else "cmpl")
        try:
            if ask.stream:
                return await self._stream(request, ask, sim)
            return await self._whole(ask, sim)
        except (asyncio.CancelledError, ConnectionResetError):
            self.twin.abort(sim)  # the client went away, as vLLM aborts the request
            raise

    def _usage(self, ask: CompletionAsk, sim: SimRequest) -> dict:
        return {"prompt_tokens": ask.prompt_tokens, "total_tokens": ask.prompt_tokens
                + sim.generated, "completion_tokens": sim.generated}

    def _chunk(self, ask: CompletionAsk, sim: SimRequest, created: int, text: str | None,
               finish: str | None, twin: dict, role: bool = False) -> bytes:
        if ask.chat:
            delta = {"role": "assistant", "content": ""} if role else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
                      "stop_reason": None}
            obj = "text_completion"
        msg = {"id": sim.request_id, "object": obj, "created": created, "model": ask.model,
               "choices": [choice], "twin": twin}
        return b"data: " + orjson.dumps(msg) + b"\n\n"

    async def _stream(self, request: web.Request, ask: CompletionAsk,
                      sim: SimRequest) -> web.StreamResponse:
        created = int(time.time())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        events = sim.events
        done = False
        while not done:
            # the events that are due, written at once: one send per wake-up, so a server that
            # fell behind catches up instead of paying a system call per token
            parts = []
            for ev in await events.take():
                if isinstance(ev, RequestRefused):
                    err = json.dumps(_refusal(ev).to_json()).encode()  # vLLM's spacing
                    parts.append(b"data: " + err + b"\n\n")
                    done = True
                    break
                twin = {"t_ns": int(ev.time_ns), "tokens": int(ev.tokens),
                        "arrival_ns": sim.arrival_ns}
                if ask.chat and ev.first:
                    parts.append(self._chunk(ask, sim, created, None, None, twin, role=True))
                finish = None
                if ev.finished:
                    finish = "length"
                    twin = {**twin, **sim.twin_summary()}
                parts.append(self._chunk(ask, sim, created, TOKEN_TEXT * int(ev.tokens),
                                         finish, twin))
                if ev.finished:
                    done = True
                    break
            await resp.write(b"".join(parts))
        if ask.include_usage and sim.finish_ns is not None:
            usage = {"id": sim.request_id, "object": "chat.completion.chunk" if ask.chat
                     else "text_completion", "created": created, "model": ask.model,
                     "choices": [], "usage": self._usage(ask, sim),
                     "twin": sim.twin_summary()}
            await resp.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
        else:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _whole(self, ask: CompletionAsk, sim: SimRequest) -> web.Response:
        finished = False
        while not finished:
            for ev in await sim.events.take():
                if isinstance(ev, RequestRefused):
                    raise _refusal(ev)
                if ev.finished:
                    finished = True
                    break
        text = TOKEN_TEXT * sim.generated
        if ask.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": "length", "stop_reason": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                      "stop_reason": None}
            obj = "text_completion"
        twin = {**sim.twin_summary(), "token_times_ns": sim.token_times_ns,
                "token_counts": sim.token_counts}
        return json_response({"id": sim.request_id, "object": obj, "created": int(time.time()),
                              "model": ask.model, "choices": [choice],
                              "usage": self._usage(ask, sim), "twin": twin})

    # ---- models and adapters -------------------------------------------------------------
    def _card(self, model_id: str, root: str, parent: str | None, max_len: int | None) -> dict:
        return {"id": model_id, "object": "model", "created": self.created,
                "owned_by": "vllm", "root": root, "parent": parent,
                "max_model_len": max_len, "permission": []}

    async def models(self, request: web.Request) -> web.Response:
        data = [self._card(self.model_name, self.model_name, None, self.max_model_len)]
        data += [self._card(a.name, a.path or a.name, self.model_name, None)
                 for a in self.adapters.values()]
        return json_response({"object": "list", "data": data})

    async def load_adapter(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = body.get("lora_name") if isinstance(body, dict) else None
        path = body.get("lora_path") if isinstance(body, dict) else None
        if not name or not path or not isinstance(name, str) or not isinstance(path, str):
            raise RequestError("Both 'lora_name' and 'lora_path' must be provided.",
                               err_type="InvalidUserInput")
        if name == self.model_name:
            raise RequestError(f"The lora adapter '{name}' conflicts with a served base "
                               "model.", err_type="InvalidUserInput")
        if name in self.adapters and not body.get("load_inplace"):
            raise RequestError(f"The lora adapter '{name}' has already been loaded. If you "
                               "want to load the adapter in place, set 'load_inplace' to True.",
                               err_type="InvalidUserInput")
        if not self.config.enable_lora:
            raise RequestError("LoRA is not enabled on this server (--no-enable-lora)",
                               err_type="InvalidUserInput")
        if not os.path.isdir(path):
            raise RequestError(f"Loading lora {name} failed: No adapter found for {path}",
                               HTTPStatus.NOT_FOUND, "NotFoundError")
        entry = AdapterEntry(name, path, adapter_rank(path, self.config.max_lora_rank))
        self._check_rank(entry)
        self.adapters[name] = entry
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_adapter(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        name = body.get("lora_name") if isinstance(body, dict) else None
        if not name:
            raise RequestError("'lora_name' needs to be provided to unload a LoRA adapter.",
                               err_type="InvalidUserInput")
        if name not in self.adapters:
            raise RequestError(f"The lora adapter '{name}' cannot be found.",
                               HTTPStatus.NOT_FOUND, "NotFoundError")
        del self.adapters[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # ---- the rest ------------------------------------------------------------------------
    async def tokenize(self, request: web.Request) -> web.Response:
        n = parse_tokenize(await self._body(request))
        return json_response({"count": n, "max_model_len": self.max_model_len,
                              "tokens": list(range(n)), "token_strs": None})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return json_response({"version": f"{self.config.vllm_version}.0",
                              "twinbench": {"version": TOOL_VERSION, "twin": True,
                                            "profile": self.profile.name,
                                            "speed": self.options.speed}})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; "
                                                     "charset=utf-8"})
