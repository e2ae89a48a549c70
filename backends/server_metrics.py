"""Scrape a vLLM server's Prometheus `/metrics` into run-file `sample` lines (DESIGN §5).

Only the families we keep are parsed: vLLM's exposition is tens of kilobytes of histograms,
and parsing all of it on the dispatching event loop would delay sends. The lines of the wanted
families are picked out first (a cheap prefix test) and then parsed with
`prometheus_client.parser.text_string_to_metric_families`, never by hand.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

# family name -> key in a sample. Series of one family (one per model_name) are summed.
GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",      # name before vLLM 0.10
    "vllm:num_preemptions": "preemptions_total",  # counter; its sample is ..._total
    "vllm:num_preemptions_total": "preemptions_total",
}
LORA_INFO = "vllm:lora_requests_info"
CACHE_INFO = "vllm:cache_config_info"
WANTED = tuple(GAUGES) + (LORA_INFO, CACHE_INFO)
_PREFIXES = tuple(WANTED) + tuple(f"# HELP {n} " for n in WANTED) + \
    tuple(f"# TYPE {n} " for n in WANTED)


def select_lines(text: str) -> str:
    """The exposition lines of the families in `WANTED` (plus their HELP/TYPE lines)."""
    keep = [line for line in text.splitlines() if line.startswith(_PREFIXES)]
    return "\n".join(keep) + "\n"


def _split_adapters(value: str) -> list[str]:
    return [a for a in value.split(",") if a]


def parse_metrics(text: str) -> dict[str, Any]:
    """One sample: running/waiting requests, KV usage (0-1), preemptions, LoRA info."""
    out: dict[str, Any] = {}
    lora_latest: tuple[float, dict] | None = None
    for family in text_string_to_metric_families(select_lines(text)):
        if family.name == LORA_INFO or family.name == CACHE_INFO:
            if family.name == LORA_INFO:
                # one series per distinct label set; the value is the time of its last
                # update, so the newest series is the current state
                for s in family.samples:
                    if lora_latest is None or s.value >= lora_latest[0]:
                        lora_latest = (s.value, dict(s.labels))
            continue
        key = GAUGES.get(family.name)
        if key is None:
            continue
        total = sum(s.value for s in family.samples
                    if not s.name.endswith(("_created",)))
        out[key] = out.get(key, 0.0) + total
    if lora_latest is not None:
        labels = lora_latest[1]
        out["lora"] = {
            "max_lora": int(float(labels.get("max_lora", "0") or 0)),
            "running": _split_adapters(labels.get("running_lora_adapters", "")),
            "waiting": _split_adapters(labels.get("waiting_lora_adapters", "")),
        }
    return out


def parse_cache_config(text: str) -> dict[str, Any]:
    """`vllm:cache_config_info` labels (KV capacity: num_gpu_blocks, block_size, ...)."""
    for family in text_string_to_metric_families(select_lines(text)):
        if family.name == CACHE_INFO and family.samples:
            labels = dict(family.samples[0].labels)
            for k in ("num_gpu_blocks", "num_cpu_blocks", "block_size"):
                if labels.get(k) not in (None, "", "None"):
                    try:
                        labels[k] = int(float(labels[k]))
                    except ValueError:
                        pass
            return labels
    return {}


async def scrape_loop(fetch_text: Callable[[], Any], emit: Callable[[float, dict], None],
                      clock: Callable[[], float], interval_s: float,
                      stop: asyncio.Event) -> int:
    """Scrape every `interval_s` until `stop` is set; returns the number of samples taken.

    `fetch_text()` is a coroutine returning the exposition text, or None when the server
    has no /metrics (then scraping ends quietly). A failed scrape is skipped, not fatal.
    """
    taken = 0
    while not stop.is_set():
        t = clock()
        try:
            text = await fetch_text()
        except Exception:  # a slow or failing /metrics must never stop a run
            text = ""
        if text is None:
            return taken
        if text:
            try:
                metrics = parse_metrics(text)
            except ValueError:
                metrics = {}
            if metrics:
                emit(t, metrics)
                taken += 1
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except asyncio.TimeoutError:
            pass
    return taken
