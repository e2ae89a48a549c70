"""A small real aiohttp server that answers like vLLM's OpenAI API, with faults on demand.

Used by tests/test_backend_*.py (loaded by path, not collected). The request's `model` picks
the behaviour, so one trace can mix healthy requests and every fault:

  tiny, a0, a1, ...  stream `max_tokens` chunks, one token each, then usage and [DONE]
  e500 / e400        HTTP error with an OpenAI / vLLM shaped JSON body
  break              three chunks, then the connection is dropped mid-stream
  hang               headers and one chunk, then silence
  badjson            one chunk, then a data line that is not JSON
  short              half of max_tokens, finish_reason "length", then [DONE]
  noend              all chunks, then the stream closes without [DONE]

Tokens come every `token_delay_s` seconds. Every request body and its receive time
(perf_counter) is kept in `received`. Runs in a thread with its own event loop.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

from aiohttp import web

HEALTHY_PREFIXES = ("tiny", "a")
FAULTS = ("e500", "e400", "break", "hang", "badjson", "short", "noend")

METRICS_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} %(running)d
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 3.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="a0,a1",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.6e9
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="2048",num_cpu_blocks="None"} 1.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="tiny"} 1.0
vllm:e2e_request_latency_seconds_count{model_name="tiny"} 1.0
vllm:e2e_request_latency_seconds_sum{model_name="tiny"} 0.2
"""


class FakeServer:
    def __init__(self, token_delay_s: float = 0.002, adapters=("a0", "a1"),
                 max_model_len: int = 4096, extra_models=FAULTS):
        self.token_delay_s = token_delay_s
        self.models = ["tiny", *adapters, *extra_models]
        self.max_model_len = max_model_len
        self.received: list[tuple[float, str, dict]] = []   # (perf_counter, path, body)
        self.loaded: list[dict] = []
        self.running = 0
        self.peak_running = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # ---- handlers -----------------------------------------------------------------------
    async def models_list(self, request: web.Request) -> web.Response:
        data = []
        for m in self.models:
            card = {"id": m, "object": "model", "owned_by": "vllm", "root": m,
                    "parent": None if m == "tiny" else "tiny"}
            if m == "tiny":
                card["max_model_len"] = self.max_model_len
            data.append(card)
        return web.json_response({"object": "list", "data": data})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0-fake"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=METRICS_TEXT % {"running": self.running})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "messages" in body:  # a 5-token "chat template" around the content
            text = body["messages"][0]["content"]
            count = len(text.split()) + 5
        else:
            count = len(body["prompt"].split()) + 1  # a BOS token
        return web.json_response({"count": count, "max_model_len": self.max_model_len,
                                  "tokens": list(range(count))})

    async def load_lora(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not str(body.get("lora_path", "")).startswith("/ok/"):
            return web.json_response({"object": "error", "message": "bad path", "code": 404},
                                     status=404)
        self.loaded.append(body)
        self.models.append(body["lora_name"])
        return web.Response(text="Success")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        t = time.perf_counter()
        body = await request.json()
        self.received.append((t, request.path, body))
        model = body.get("model")
        if model not in self.models:
            return web.json_response({"object": "error", "type": "NotFoundError",
                                      "message": f"The model `{model}` does not exist.",
                                      "code": 404}, status=404)
        if model == "e500":
            return web.json_response({"error": {"message": "engine exploded",
                                                "type": "InternalServerError"}}, status=500)
        if model == "e400":
            return web.json_response({"object": "error", "message": "max_tokens is bad",
                                      "type": "BadRequestError", "code": 400}, status=400)
        chat = request.path.endswith("chat/completions")
        n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        if model == "short":
            n = max(1, n // 2)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            if chat:
                await self._send(resp, self._chunk(chat, None, role=True))
            for k in range(n):
                await asyncio.sleep(self.token_delay_s)
                if model == "badjson" and k == 1:
                    await resp.write(b'data: {"choices": [{"text": oops\n\n')
                    return resp
                if model == "break" and k == 3:
                    request.transport.close()  # drop the connection mid-stream
                    return resp
                if model == "hang" and k == 1:
                    await asyncio.sleep(3600)
                fr = "length" if k == n - 1 else None
                await self._send(resp, self._chunk(chat, f" t{k}", finish=fr))
            prompt = body.get("prompt")
            n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
            await self._send(resp, {"id": "x", "object": "text_completion", "choices": [],
                                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": n,
                                              "total_tokens": n_prompt + n}})
            if model != "noend":
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        finally:
            self.running -= 1
        return resp

    @staticmethod
    def _chunk(chat: bool, text: str | None, finish: str | None = None, role: bool = False
               ) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else {"content": text}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                    "choices": [choice], "usage": None}
        return {"id": "c", "object": "text_completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish}], "usage": None}

    @staticmethod
    async def _send(resp: web.StreamResponse, obj: dict) -> None:
        await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

    # ---- lifecycle ----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models_list)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/v1/load_lora_adapter", self.load_lora)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/chat/completions", self.generate)
        return app

    def start(self) -> "FakeServer":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                         shutdown_timeout=0.2)
            self._loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, sock)
            self._loop.run_until_complete(site.start())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        for task in asyncio.all_tasks():  # handlers still sleeping (hang)
            if task is not asyncio.current_task():
                task.cancel()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


if __name__ == "__main__":  # a standalone fake server for manual runs: PORT DELAY
    import sys

    srv = FakeServer(token_delay_s=float(sys.argv[2]) if len(sys.argv) > 2 else 0.002)
    srv.start()
    print(srv.url, flush=True)
    threading.Event().wait()
