"""`OpenAIBackend`: replays a trace against an OpenAI-compatible server on the wall clock.

Before the run: the server's models, version and cache config are read (`openai_probe`),
adapters are checked (and loaded when their paths are known), over-long requests are clipped
or refused, text prompts are fitted to the server's tokenizer. Then the origin (time 0 of the
run clock) is set just before the first send, and `replay.dispatch` sends each request at its
arrival time while `/metrics` is scraped into the run file. See docs/real-backend.md.
"""
from __future__ import annotations

import asyncio
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import numpy as np

from twinbench.backends.base import ReplayOptions, RunInfo
from twinbench.backends.openai_plan import RequestPlan
from twinbench.backends.openai_probe import ServerFacts, count_tokens, load_adapter, probe
from twinbench.backends.openai_run import RunDriver, open_session
from twinbench.backends.prompts import fit_words
from twinbench.reports.records import RequestRecord
from twinbench.traces.core import Trace
from twinbench.traces.errors import TwinbenchError

@dataclass
class OpenAIConfig:
    base_url: str
    model: str | None = None               # base model; None = the first non-adapter model
    endpoint: str = "completions"          # "completions" | "chat"
    api_key: str | None = field(default=None, repr=False)   # never written anywhere
    prompt_mode: str = "ids"               # "ids" | "text" (chat always uses text)
    max_concurrency: int | None = None     # overrides ReplayOptions.max_concurrency
    workers: int = 1
    request_timeout_s: float | None = None  # overrides ReplayOptions.request_timeout_s
    scrape_interval_s: float = 1.0         # 0 = do not scrape /metrics
    load_adapters: dict[str, str] = field(default_factory=dict)  # name -> path on the server
    check_models: bool = True
    over_length: str = "clip"              # "clip" | "refuse" (requests > max_model_len)
    stop_grace_s: float = 2.0              # after SIGINT, in-flight requests get this long
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into every request body
    twin_clock: bool = False               # send `twin_arrival_s` (for `twinbench serve`)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        if self.endpoint not in ("completions", "chat"):
            raise TwinbenchError(f"--endpoint {self.endpoint}: use completions or chat")
        if self.prompt_mode not in ("ids", "text"):
            raise TwinbenchError(f"--prompt-mode {self.prompt_mode}: use ids or text")
        if self.workers < 1:
            raise TwinbenchError(f"--workers {self.workers}: must be at least 1")
        if not isinstance(self.extra_body, dict):
            raise TwinbenchError("--extra-body: expected a JSON object")

    @property
    def chat(self) -> bool:
        return self.endpoint == "chat"

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def public(self) -> dict:
        """The config as written to run files: without the API key."""
        d = asdict(self)
        d.pop("api_key")
        d["api_key_set"] = bool(self.api_key)
        return d


LAG_WARNING_MS = 10.0  # a dispatch lag p99 above this is reported on stderr after the run


class OpenAIBackend:
    """Real OpenAI-compatible server (vLLM first), dispatched open loop on the wall clock."""

    name = "openai"
    realtime = True

    def __init__(self, config: OpenAIConfig, facts: ServerFacts | None = None):
        self.config = config
        self.facts = facts
        self.worker_pids: list[int] = []  # child processes of the last run (benchmarks pin them)
        self._prepared: _Prepared | None = None

    def describe(self) -> dict:
        d: dict[str, Any] = {"name": self.name, **self.config.public()}
        if self.facts is not None:
            d["server"] = self.facts.to_dict()
        return d

    def probe_now(self) -> ServerFacts:
        """Read the server's facts synchronously (before the run file's header is written)."""
        async def go() -> ServerFacts:
            async with open_session(4) as session:
                return await probe(session, self.config.base_url, self.config.headers(),
                                   self.config.check_models)
        self.facts = asyncio.run(go())
        return self.facts

    # ---- before the run -----------------------------------------------------------------
    def prepare(self, trace: Trace, options: ReplayOptions) -> None:
        """Every pre-run check (models, adapters, lengths, text prompts), synchronously.

        Optional: `replay()` does it itself when not done. Calling it before the run file is
        opened means a user error (missing adapter, bad --model) leaves no run file behind.
        """
        self._prepared = asyncio.run(self._prepare(trace, options))

    async def _prepare(self, trace: Trace, options: ReplayOptions) -> "_Prepared":
        from twinbench.replay.dispatch import rows_to_send

        cfg = self.config
        started = time.perf_counter()
        async with open_session(16) as session:
            if self.facts is None:
                self.facts = await probe(session, cfg.base_url, cfg.headers(), cfg.check_models)
            facts = self.facts
            base = cfg.model or facts.base_model()
            if base is None:
                raise TwinbenchError(f"--model: not given, and {cfg.base_url}/v1/models "
                                     "lists no model to use as the base")
            if cfg.check_models and facts.models and base not in facts.model_ids:
                raise TwinbenchError(f"--model {base}: not served by {cfg.base_url} "
                                     f"(it serves: {', '.join(facts.model_ids)})")
            rows, cut_rows = rows_to_send(trace, options.duration_s)
            plan = RequestPlan.build(trace, base, cfg.chat, cfg.prompt_mode, options.seed,
                                     facts.max_model_len(base), cfg.over_length,
                                     extra_body=cfg.extra_body, twin_clock=cfg.twin_clock)
            rows = rows[~plan.refused[rows]]
            loaded = await self._check_adapters(session, trace, plan, rows)
            if plan.prompt_mode == "text":
                await self._fit_texts(session, plan, rows, base)
        return _Prepared(key=(id(trace), options.seed, options.duration_s), plan=plan,
                         rows=rows, cut_rows=cut_rows, loaded=loaded,
                         prepare_s=time.perf_counter() - started)

    # ---- the run ------------------------------------------------------------------------
    async def replay(self, trace: Trace, options: ReplayOptions, sink) -> RunInfo:
        from twinbench.replay.dispatch import DispatchSettings
        from twinbench.replay.progress import Progress

        cfg = self.config
        cap = cfg.max_concurrency if cfg.max_concurrency is not None else options.max_concurrency
        timeout_s = cfg.request_timeout_s if cfg.request_timeout_s is not None \
            else options.request_timeout_s
        stop: asyncio.Event = getattr(sink, "stop", None) or asyncio.Event()
        prep = self._prepared
        if prep is None or prep.key != (id(trace), options.seed, options.duration_s):
            prep = await self._prepare(trace, options)
        self._prepared = None
        plan, rows, cut_rows, facts = prep.plan, prep.rows, prep.cut_rows, self.facts

        settings = DispatchSettings(warmup_requests=options.warmup_requests,
                                    duration_s=options.duration_s,
                                    drain_limit_s=options.drain_limit_s,
                                    max_concurrency=cap, stop_grace_s=cfg.stop_grace_s)
        self._emit_not_sent(trace, plan, cut_rows, options, sink)
        run = RunDriver(self, trace, plan, options, sink, stop, settings, timeout_s, cap)
        cpu_before = _cpu_s()
        origin, stats = await run.execute(rows, Progress(len(trace), options.quiet))
        lag_p99_ms = float(np.percentile(stats.lags, 99)) * 1e3 if stats.lags else None
        if lag_p99_ms is not None and lag_p99_ms > LAG_WARNING_MS and not options.quiet:
            print(f"twinbench: warning: dispatch lag p99 {lag_p99_ms:.1f} ms: the client did not "
                  "keep up with the schedule (see docs/real-backend.md; try --workers)",
                  file=sys.stderr)
        return RunInfo(
            backend=self.name, version=facts.version,
            server_config={"base_url": cfg.base_url, "base_model": plan.base_model,
                           "max_model_len": plan.max_model_len, "models": facts.model_ids,
                           "cache_config": facts.cache_config},
            extra={"prompt_mode": plan.prompt_mode, "endpoint": cfg.endpoint,
                   "workers": cfg.workers, "max_concurrency": cap,
                   "adapters_loaded": prep.loaded, "prepare_s": prep.prepare_s,
                   "dispatch_origin_perf_counter_s": origin,
                   "dispatch_origin_unix_s": getattr(sink, "origin_unix_s", None),
                   "clipped_requests": int(plan.clipped.sum()),
                   "refused_requests": int(plan.refused.sum()),
                   "not_sent_after_duration": int(len(cut_rows)),
                   "cut_short_requests": run.cut_short,
                   "text_prompt_count_mismatch": run.text_mismatch(rows),
                   "drained_out": stats.drained_out,
                   "cancelled_in_flight": stats.cancelled_in_flight,
                   "metrics_samples": run.samples,
                   "worker_failures": run.worker_failures,
                   "dispatch_lag_p99_ms": lag_p99_ms,
                   "client_cpu_s": _cpu_s() - cpu_before})

    async def _check_adapters(self, session: aiohttp.ClientSession, trace: Trace,
                              plan: RequestPlan, rows: np.ndarray) -> list[str]:
        """Missing adapters are loaded when their path is known, else a clear error."""
        cfg = self.config
        if not cfg.check_models:
            return []
        served = set(self.facts.model_ids)
        missing = [a for a in plan.adapters_used(rows) if a not in served]
        paths = {a.name: a.path for a in trace.adapters if a.path}
        paths.update(cfg.load_adapters)
        no_path = [a for a in missing if a not in paths]
        if no_path:
            raise TwinbenchError(
                f"adapter(s) {', '.join(no_path)} not served by {cfg.base_url} "
                f"(/v1/models lists: {', '.join(sorted(served))}); start the server with them "
                "or pass --load-adapters name=path,... to register them at runtime")
        for name in missing:
            await load_adapter(session, cfg.base_url, cfg.headers(), name, paths[name])
            self.facts.models.append({"id": name, "root": paths[name], "parent": plan.base_model})
        return missing

    async def _fit_texts(self, session: aiohttp.ClientSession, plan: RequestPlan,
                         rows: np.ndarray, base: str) -> None:
        """Fit each row's text to its exact token count with the server's /tokenize."""
        cfg = self.config
        can_count = True

        async def counter(text: str) -> int | None:
            nonlocal can_count
            if not can_count:
                return None
            n = await count_tokens(session, cfg.base_url, cfg.headers(), base, text, plan.chat)
            can_count = n is not None
            return n

        sem = asyncio.Semaphore(8)

        async def fit(row: int) -> None:
            async with sem:
                text, n = await fit_words(plan.builder, plan.trace, row,
                                          int(plan.prompt_len[row]), counter)
            plan.texts[row] = text
            if n is not None:
                plan.text_counts[row] = n

        await asyncio.gather(*(fit(int(r)) for r in rows))

    @staticmethod
    def _emit_not_sent(trace: Trace, plan: RequestPlan, cut_rows: np.ndarray,
                       options: ReplayOptions, sink) -> None:
        for i in np.flatnonzero(plan.refused):
            sink.emit(_unsent(trace, plan, int(i), options, "error",
                              f"refused before the run: {int(trace.prompt_tokens[i])} prompt + "
                              f"{int(trace.output_tokens[i])} output tokens exceed the "
                              f"server's max_model_len {plan.max_model_len}"))
        for i in cut_rows:
            if not plan.refused[i]:
                sink.emit(_unsent(trace, plan, int(i), options, "cancelled",
                                  f"not sent: arrives after --duration {options.duration_s:g} s"))


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the worker processes)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class _Prepared:
    key: tuple
    plan: RequestPlan
    rows: np.ndarray          # rows to send, by arrival
    cut_rows: np.ndarray      # rows after --duration
    loaded: list[str]         # adapters registered at runtime
    prepare_s: float


def _unsent(trace: Trace, plan: RequestPlan, i: int, options: ReplayOptions, status: str,
            error: str) -> RequestRecord:
    return RequestRecord(id=trace.request_id(i), adapter=trace.adapter_name(i),
                         arrival_s=float(trace.arrival_s[i]),
                         prompt_tokens=int(plan.prompt_len[i]),
                         requested_output_tokens=int(plan.output_len[i]),
                         warmup=i < options.warmup_requests, status=status, error=error)
