"""`/metrics` of `twinbench serve`: vLLM's Prometheus metric names, from the twin's state.

Gauges (running/waiting requests, KV usage, LoRA info) are read from the engine when scraped;
counters and histograms are updated as requests finish. Latencies are simulated seconds
(equal to wall seconds at `--speed 1`). One registry per server: no process-wide state.
"""
from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from twinbench.twin.server_sim import NS, RealtimeTwin, SimRequest

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)


class EngineStateCollector:
    """Scrape-time gauges, read from the engine after advancing it to the present."""

    def __init__(self, twin: RealtimeTwin, model_name: str, cache_info: dict[str, Any],
                 max_loras: int):
        self.twin = twin
        self.model_name = model_name
        self.cache_info = {k: str(v) for k, v in cache_info.items()}
        self.max_loras = max_loras
        self._lora_state: tuple[str, float] | None = None  # running set, time it was first seen

    def collect(self):
        twin = self.twin
        twin.sync()
        engine = twin.engine
        labels = ["model_name", "engine"]
        values = [self.model_name, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        running = list(getattr(engine, "running", []))
        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    len(running))
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                    len(getattr(engine, "waiting", [])))
        pool = getattr(engine, "pool", None)
        usage = 0.0
        if pool is not None:
            total = pool.used + pool.free
            usage = pool.used / total if total else 0.0
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                    usage)
        c = CounterMetricFamily("vllm:num_preemptions", "Cumulative number of preemptions "
                                "from the engine.", labels=labels)
        c.add_metric(values, twin.preemptions_before + twin.preemptions_of_epoch())
        yield c
        yield self._lora_info(engine, running)
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine "
                                 "CacheConfig", labels=sorted(self.cache_info) + ["engine"])
        info.add_metric([self.cache_info[k] for k in sorted(self.cache_info)] + ["0"], 1.0)
        yield info

    def _lora_info(self, engine: Any, running: list) -> GaugeMetricFamily:
        """vLLM's `lora_requests_info`: labels carry the adapter sets, the value the (Unix)
        time the current set was first reported, as vLLM's gauge does."""
        names = getattr(engine, "adapter_names", [])
        run_set = sorted({names[r.adapter] for r in running if getattr(r, "adapter", -1) >= 0})
        wait_set = sorted({names[r.adapter] for r in getattr(engine, "waiting", [])
                           if getattr(r, "adapter", -1) >= 0})
        key = ",".join(run_set) + "|" + ",".join(wait_set)
        if self._lora_state is None or self._lora_state[0] != key:
            self._lora_state = (key, time.time())
        g = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                              labels=["max_lora", "waiting_lora_adapters",
                                      "running_lora_adapters"])
        g.add_metric([str(self.max_loras), ",".join(wait_set), ",".join(run_set)],
                     self._lora_state[1])
        return g


class ServerMetrics:
    """The registry behind `/metrics` plus the per-request counters and histograms."""

    def __init__(self, twin: RealtimeTwin, model_name: str, cache_info: dict[str, Any],
                 max_loras: int):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(EngineStateCollector(twin, model_name, cache_info, max_loras))
        labels = ["model_name", "engine"]
        self.values = (model_name, "0")
        reg = self.registry
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     labels, registry=reg)
        self.generation_tokens = Counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.", labels,
                                         registry=reg)
        self.success = Counter("vllm:request_success", "Count of successfully processed "
                               "requests.", labels + ["finished_reason"], registry=reg)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first "
                              "token in seconds.", labels, buckets=LATENCY_BUCKETS, registry=reg)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token "
                             "latency in seconds.", labels, buckets=ITL_BUCKETS, registry=reg)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request "
                             "latency in seconds.", labels, buckets=LATENCY_BUCKETS, registry=reg)

    def request_finished(self, req: SimRequest) -> None:
        v = self.values
        self.prompt_tokens.labels(*v).inc(req.prompt_tokens)
        self.generation_tokens.labels(*v).inc(req.generated)
        self.success.labels(*v, "length").inc()
        if req.first_token_ns is not None:
            self.ttft.labels(*v).observe((req.first_token_ns - req.arrival_ns) / NS)
        if req.finish_ns is not None:
            self.e2e.labels(*v).observe((req.finish_ns - req.arrival_ns) / NS)
        itl = self.itl.labels(*v)
        times = req.token_times_ns
        for a, b in zip(times, times[1:]):
            itl.observe((b - a) / NS)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
