"""What the real backend asks a server before a run: version, models, adapters, limits.

`/version`, `/v1/models`, `/metrics` (for `vllm:cache_config_info`), `/v1/load_lora_adapter`
and `/tokenize` are vLLM's endpoints; a server without some of them (any OpenAI-compatible
server) just yields less information, except that `/v1/models` must answer when models are
checked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from twinbench.backends.server_metrics import parse_cache_config
from twinbench.backends.stream_state import error_text
from twinbench.traces.errors import TwinbenchError

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass
class ServerFacts:
    base_url: str
    version: str | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    cache_config: dict[str, Any] = field(default_factory=dict)
    has_metrics: bool | None = None

    @property
    def model_ids(self) -> list[str]:
        return [str(m.get("id")) for m in self.models]

    def base_model(self) -> str | None:
        """The first served model that is not an adapter (vLLM marks adapters by `parent`)."""
        for m in self.models:
            if not m.get("parent"):
                return str(m.get("id"))
        return self.model_ids[0] if self.models else None

    def max_model_len(self, model: str | None) -> int | None:
        for m in self.models:
            if m.get("id") == model and m.get("max_model_len"):
                return int(m["max_model_len"])
        lens = [int(m["max_model_len"]) for m in self.models if m.get("max_model_len")]
        return min(lens) if lens else None

    def to_dict(self) -> dict:
        return {"base_url": self.base_url, "version": self.version,
                "models": [{k: m.get(k) for k in ("id", "root", "parent", "max_model_len")}
                           for m in self.models],
                "cache_config": self.cache_config}


def _unreachable(base_url: str, e: BaseException) -> TwinbenchError:
    return TwinbenchError(f"--base-url {base_url}: server not reachable "
                          f"({type(e).__name__}: {e})")


async def get_json(session: aiohttp.ClientSession, url: str, headers: dict
                   ) -> tuple[int, Any]:
    async with session.get(url, headers=headers, timeout=PROBE_TIMEOUT) as resp:
        raw = await resp.read()
        if resp.status != 200:
            return resp.status, raw
        try:
            return 200, json.loads(raw)
        except ValueError:
            return 200, None


async def probe(session: aiohttp.ClientSession, base_url: str, headers: dict,
                check_models: bool) -> ServerFacts:
    """Version, models and cache config. With `check_models`, /v1/models must answer."""
    facts = ServerFacts(base_url=base_url)
    try:
        status, models = await get_json(session, f"{base_url}/v1/models", headers)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        if check_models:
            raise _unreachable(base_url, e) from None
        return facts
    if status == 200 and isinstance(models, dict) and isinstance(models.get("data"), list):
        facts.models = [m for m in models["data"] if isinstance(m, dict)]
    elif check_models:
        detail = error_text(status, models) if status != 200 else "no model list in the answer"
        raise TwinbenchError(f"--base-url {base_url}: GET /v1/models failed: {detail} "
                             "(pass --no-check-models to skip the check)")
    try:
        status, ver = await get_json(session, f"{base_url}/version", headers)
        if status == 200 and isinstance(ver, dict):
            facts.version = str(ver.get("version")) if ver.get("version") else None
        text = await fetch_metrics(session, base_url, headers)
        facts.has_metrics = text is not None
        if text:
            facts.cache_config = parse_cache_config(text)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        pass  # optional facts
    return facts


async def fetch_metrics(session: aiohttp.ClientSession, base_url: str, headers: dict
                        ) -> str | None:
    """The /metrics text; None when the server has no such endpoint."""
    async with session.get(f"{base_url}/metrics", headers=headers, timeout=PROBE_TIMEOUT) as resp:
        if resp.status == 404:
            return None
        if resp.status != 200:
            return ""
        return await resp.text()


async def load_adapter(session: aiohttp.ClientSession, base_url: str, headers: dict,
                       name: str, path: str) -> None:
    """Register adapter `name` from `path` through vLLM's runtime-loading endpoint."""
    body = {"lora_name": name, "lora_path": path}
    try:
        async with session.post(f"{base_url}/v1/load_lora_adapter", json=body, headers=headers,
                                timeout=PROBE_TIMEOUT) as resp:
            if resp.status == 200:
                return
            detail = error_text(resp.status, await resp.read())
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise _unreachable(base_url, e) from None
    if resp.status == 400 and "already been loaded" in detail:
        return  # registered by an earlier run (vLLM's wording); what we wanted holds
    hint = " (start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)" if resp.status == 404 \
        and "not found" in detail.lower() and "lora" not in detail.lower() else ""
    raise TwinbenchError(f"--load-adapters {name}={path}: the server refused to load it: "
                         f"{detail}{hint}")


async def count_tokens(session: aiohttp.ClientSession, base_url: str, headers: dict,
                       model: str, text: str, chat: bool) -> int | None:
    """Tokens the server counts for `text` (with the chat template when `chat`); None if the
    server has no /tokenize."""
    body: dict[str, Any] = {"model": model}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
        body["add_generation_prompt"] = True
    else:
        body["prompt"] = text
        body["add_special_tokens"] = True
    async with session.post(f"{base_url}/tokenize", json=body, headers=headers,
                            timeout=PROBE_TIMEOUT) as resp:
        if resp.status != 200:
            return None
        obj = await resp.json(content_type=None)
    count = obj.get("count") if isinstance(obj, dict) else None
    if count is None and isinstance(obj, dict) and isinstance(obj.get("tokens"), list):
        count = len(obj["tokens"])
    return None if count is None else int(count)
