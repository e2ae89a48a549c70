"""The twin's engine: vLLM 0.32's V1 scheduler stepped in integer-nanosecond simulated time.

One scheduler (`_schedule`, a line-by-line mirror of `Scheduler.schedule()` in
vllm/v1/core/sched/scheduler.py for the synchronous FCFS case without speculative decoding,
connectors or encoders) is used by both modes:

- step mode: every engine step runs `_schedule()` and `_update()` (the reference);
- coalesced mode: when a step is known to repeat — every running request decoding, nothing
  admitted, preempted or finished in the last step, no new arrival — the following steps differ
  only by one more KV token per sequence, so `_segment()` advances them all at once: end times
  from `StepModel.decode_segment_ends` (integer), up to the first finish, arrival, KV
  exhaustion or time limit. Same integers as stepping, hence identical records.

`Engine` is also the incremental API of the real-time twin server: `submit`, `advance`,
`next_event_ns`, `abort`.
"""
from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from twinbench.twin.adapters import AdapterCaches
from twinbench.twin.config import ServerConfig
from twinbench.twin.kvpool import make_pool
from twinbench.twin.profile import Profile
from twinbench.twin.steptime import StepModel
from twinbench.twin.waiting import WaitingQueue

WAITING, RUNNING, PREEMPTED, FINISHED, ABORTED = 0, 1, 2, 3, 4
SEGMENT_MAX_STEPS = 4096  # steps advanced at once at most (bounds the arrays of one segment)


@dataclass
class TokenEvent:
    request_id: str
    time_ns: int
    tokens: int
    first: bool
    finished: bool


class Req:
    """One request's scheduler state (vLLM's `Request` fields the scheduler reads)."""

    __slots__ = ("key", "rid", "adapter", "rank", "prompt", "target", "arrival_ns", "visible_ns",
                 "computed", "output", "blocks", "status", "run_start", "run_len", "old_runs",
                 "preemptions", "prefix", "pool_blocks", "requested", "wkey", "lazy", "base")

    def __init__(self, key, rid: str, adapter: int, rank: int, prompt: int, target: int,
                 requested: int, arrival_ns: int, visible_ns: int, prefix=None):
        self.key = key
        self.rid = rid
        self.adapter = adapter      # adapter index, -1 = base model
        self.rank = rank
        self.prompt = prompt
        self.target = target        # output tokens it will produce (clamped to max_model_len)
        self.requested = requested
        self.arrival_ns = arrival_ns
        self.visible_ns = visible_ns
        self.computed = 0           # num_computed_tokens
        self.output = 0             # num_output_tokens
        self.blocks = 0             # KV blocks held
        self.status = WAITING
        self.run_start = -1         # current run of consecutive token steps
        self.run_len = 0
        self.old_runs: list | None = None  # earlier runs [(start_step, n)], rare
        self.preemptions = 0
        self.prefix = prefix        # prefix-cache block keys or None
        self.pool_blocks: list | None = None  # prefix pool bookkeeping
        self.wkey = 0               # position in the waiting queue
        self.lazy = False           # decoding implicitly since step `base` (coalesced mode)
        self.base = 0

    def token_runs(self) -> list[tuple[int, int]]:
        runs = list(self.old_runs or [])
        if self.run_len:
            runs.append((self.run_start, self.run_len))
        return runs

    @property
    def first_step(self) -> int:
        if self.old_runs:
            return self.old_runs[0][0]
        return self.run_start if self.run_len else -1


class StepTable:
    """End time (ns) of every step, indexed by global step number; keeps only the live window,
    or every step when `keep_all` (records built after the run slice it)."""

    def __init__(self, capacity: int = 4096):
        self.buf = np.zeros(capacity, dtype=np.int64)
        self.base = 0   # step number of buf[0]
        self.size = 0   # steps stored (base .. base + size - 1)
        self.keep_all = False

    def reserve(self, n: int, min_live: Callable[[], int]) -> None:
        if self.size + n <= len(self.buf):
            return
        self._grow(n, min_live)

    def _grow(self, n: int, min_live: Callable[[], int]) -> None:
        live_from = self.base if self.keep_all else min(min_live(), self.base + self.size)
        drop = live_from - self.base
        keep = self.size - drop
        cap = len(self.buf)
        while cap < 2 * (keep + n):
            cap *= 2
        new = np.zeros(cap, dtype=np.int64) if cap != len(self.buf) else self.buf
        new[:keep] = self.buf[drop:self.size]
        self.buf, self.base, self.size = new, live_from, keep

    def append(self, t: int) -> None:
        self.buf[self.size] = t
        self.size += 1

    def extend(self, times) -> None:
        n = len(times)
        if n == 1:  # a one-step segment: NumPy's slice assignment from a list costs more
            self.buf[self.size] = times[0]
        else:
            self.buf[self.size:self.size + n] = times
        self.size += n

    def at(self, step: int) -> int:
        return int(self.buf[step - self.base])

    def slice(self, start: int, n: int) -> np.ndarray:
        i = start - self.base
        return self.buf[i:i + n]

    def stored(self) -> np.ndarray:
        """The steps kept, from step `base` on."""
        return self.buf[:self.size]


class Engine:
    """A vLLM V1 engine in simulated time (see module docstring)."""

    def __init__(self, config: ServerConfig, profile: Profile | str, *, coalesce: bool = True,
                 adapter_ranks: dict[str, int] | None = None, step_log: list | None = None,
                 emit_tokens: bool = True, prefix_block_tokens: int = 0):
        profile = Profile.load(profile)
        self.profile = profile
        self.max_model_len = config.max_model_len or profile.max_model_len
        config.validate(self.max_model_len)
        self.config = config
        self.rules = config.rules
        self.model = StepModel.from_profile(profile, lora_enabled=config.enable_lora)
        self.bs = config.block_size
        self.num_gpu_blocks = config.num_gpu_blocks if config.num_gpu_blocks is not None else \
            profile.num_gpu_blocks(config.block_size, config.max_loras, config.max_lora_rank,
                                   config.enable_lora, config.gpu_memory_utilization)
        if self.num_gpu_blocks < 2:
            from twinbench.twin.config import ConfigError
            raise ConfigError(f"profile {profile.name}: no memory left for the KV cache with "
                              f"--max-loras {config.max_loras} --max-lora-rank {config.max_lora_rank}")
        if -(-self.max_model_len // self.bs) > self.num_gpu_blocks - 1:
            from twinbench.twin.config import ConfigError
            raise ConfigError(  # vLLM refuses to start in this case too
                f"--max-model-len {self.max_model_len}: needs {-(-self.max_model_len // self.bs)} "
                f"KV blocks, only {self.num_gpu_blocks - 1} available; lower --max-model-len")
        self.prefix_block_tokens = int(prefix_block_tokens or 0)
        self.pool = make_pool(self.num_gpu_blocks - 1, self.bs,
                              config.enable_prefix_caching and self.prefix_block_tokens > 0)
        self.coalesce = coalesce
        self.step_log = step_log
        self.emit_tokens = emit_tokens
        # adapters: name -> index; ranks by index
        self.adapter_index: dict[str, int] = {}
        self.adapter_names: list[str] = []
        self.adapter_ranks: list[int] = []
        for name, rank in (adapter_ranks or {}).items():
            self._adapter(name, rank)
        self.caches = AdapterCaches(config.max_loras, config.cpu_lora_slots, self.adapter_ranks,
                                    self.model)
        self.running: list[Req] = []
        self.waiting = WaitingQueue()
        # (visible_ns, seq, req) sorted, None once ingested
        self.incoming: list = []
        self._incoming_pos = 0
        self._seq = 0
        self.by_id: dict[str, Req] = {}
        self.now_ns = 0
        self.step = 0            # global number of the next step
        self.table = StepTable()
        self.stable = False      # the last schedule() would repeat as it is
        self.all_decode = False  # every running request is past its prefill
        self.events: deque[TokenEvent] = deque()
        self.on_finish: Callable[..., None] | None = None  # (req, error, status)
        self.outstanding = 0  # submitted and not finished (kept by routers)
        self.run_adapters: dict[int, int] = {}  # adapter -> running requests using it
        # (sorted run_adapters, their rank sum), reset when an adapter enters or leaves
        self._sorted_adapters: tuple[list[int], int] | None = None
        # coalesced mode: aggregates over lazy (implicitly decoding) requests
        self.n_lazy = 0
        self.sum_c = 0
        self.phase = [0] * self.bs
        self.finish_heap: list = []
        self.prefilling: list[Req] = []
        self._all_scheduled = False
        self._step_adapters: list[int] | None = None
        self.stats = {"steps": 0, "events": 0, "segments": 0, "preemptions": 0,
                      "admissions": 0, "gpu_loads": 0, "disk_loads": 0}

    # ---- requests in ----------------------------------------------------------------------
    def _adapter(self, name: str, rank: int) -> int:
        idx = self.adapter_index.get(name)
        if idx is None:
            idx = len(self.adapter_names)
            self.adapter_index[name] = idx
            self.adapter_names.append(name)
            self.adapter_ranks.append(int(rank))
        return idx

    def submit(self, request_id: str, arrival_ns: int, prompt_tokens: int, output_tokens: int,
               adapter: str | None, prefix_blocks=None, rank: int | None = None, key=None) -> Req:
        """Queue a request arriving at `arrival_ns` (ns on the run clock)."""
        a = -1
        r_rank = 0
        if adapter is not None:
            known = self.adapter_index.get(adapter)  # known adapter: skip the registration call
            if known is None:
                known = self._adapter(adapter,
                                      rank if rank is not None else self.config.max_lora_rank)
            a = known
            r_rank = self.adapter_ranks[a]
        prompt_tokens, output_tokens, arrival_ns = int(prompt_tokens), int(output_tokens), \
            int(arrival_ns)
        target = self.max_model_len - prompt_tokens  # min(), without the builtin call
        if output_tokens < target:
            target = output_tokens
        visible = arrival_ns + self.model.input_ns
        pool = self.pool
        # without a prefix cache there are no keys: skip the call
        prefix = pool.prefix_keys(prefix_blocks, prompt_tokens, self.prefix_block_tokens, a,
                                  request_id) if pool.caching else None
        req = Req(key if key is not None else request_id, request_id, a, r_rank,
                  prompt_tokens, target, output_tokens, arrival_ns, visible, prefix)
        self.by_id[request_id] = req
        item = (visible, self._seq, req)
        self._seq += 1
        if self._incoming_pos == len(self.incoming) or visible >= self.incoming[-1][0]:
            self.incoming.append(item)
        else:
            bisect.insort(self.incoming, item, lo=self._incoming_pos)
        return req

    def refusal(self, req: Req) -> str | None:
        """Why vLLM's API server would refuse this request before scheduling it, if it would."""
        if req.prompt >= self.max_model_len:
            return (f"This model's maximum context length is {self.max_model_len} tokens; the "
                    f"prompt has {req.prompt} tokens")
        if req.adapter >= 0 and not self.config.enable_lora:
            return f"The model `{self.adapter_names[req.adapter]}` does not exist (LoRA disabled)"
        if req.adapter >= 0 and self.adapter_ranks[req.adapter] > self.config.max_lora_rank:
            return (f"LoRA rank {self.adapter_ranks[req.adapter]} is greater than "
                    f"max_lora_rank {self.config.max_lora_rank}")
        if req.target < 1:
            return "no room for output tokens within max_model_len"
        return None

    def _ingest(self) -> None:
        inc, pos, now = self.incoming, self._incoming_pos, self.now_ns
        n = len(inc)
        if pos == n or inc[pos][0] > now:
            return
        waiting = self.waiting
        while pos < n and inc[pos][0] <= now:
            req = inc[pos][2]
            inc[pos] = None  # release
            pos += 1
            if req.status != WAITING:
                continue  # aborted before it arrived
            why = self.refusal(req)
            if why is not None:
                req.status = FINISHED
                self._finished(req, error=why)
                continue
            waiting.append(req)
        if pos > 4096 and pos * 2 > n:
            del inc[:pos]
            pos = 0
        self._incoming_pos = pos
        self.stable = False

    def next_arrival_ns(self) -> int | None:
        pos = self._incoming_pos
        return self.incoming[pos][0] if pos < len(self.incoming) else None

    # ---- the scheduler --------------------------------------------------------------------
    def _threshold(self) -> int:
        # schedule(): long_prefill_token_threshold only applies when more than one request is
        # eligible (num_running + num_waiting > 1) -- 0.32; 0.8.x always applied it.
        thr = self.config.long_prefill_token_threshold
        if self.rules.long_prefill_cap_only_if_contended \
                and len(self.running) + self.waiting.n <= 1:
            return 0
        return thr

    def _schedule(self) -> tuple[list[tuple[Req, int]], list[Req], int]:
        """vLLM 0.32 `Scheduler.schedule()` (sync, FCFS): returns (scheduled, preempted, admitted).

        scheduled: list of (request, num_new_tokens) in vLLM's order (running, then new).
        """
        cfg, pool = self.config, self.pool
        bs = self.bs
        running = self.running
        token_budget = cfg.max_num_batched_tokens
        thr = self._threshold()
        max_len = self.max_model_len
        scheduled: list[tuple[Req, int]] = []
        preempted: list[Req] = []

        # schedule(): "First, schedule the RUNNING requests." in admission order.
        i = 0
        while i < len(running) and token_budget > 0:
            req = running[i]
            n = req.prompt + req.output - req.computed
            if 0 < thr < n:
                n = thr
            if n > token_budget:
                n = token_budget
            cap = max_len - req.computed - 1
            if n > cap:
                n = cap
            if n <= 0:  # schedule(): "num_new_tokens == 0 ... continue"
                i += 1
                continue
            # KVCacheManager.allocate_slots(); on failure preempt `self.running[-1]` (FCFS)
            # until it fits or the request preempted itself (schedule(), _preempt_request()).
            need = -(-(req.computed + n) // bs) - req.blocks
            while need > pool.free:
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            if req.status != RUNNING:
                break
            if need > 0:
                pool.grow(req, need)
            if pool.caching:
                pool.commit(req, req.computed + n)
            scheduled.append((req, n))
            token_budget -= n
            i += 1

        # schedule(): "Record the LoRAs in scheduled_running_reqs" (0.33: all running).
        if self.rules.lora_gate_counts_all_running:
            loras = {r.adapter for r in running if r.adapter >= 0}
        else:
            loras = {r.adapter for r, _ in scheduled if r.adapter >= 0}
        admitted = 0
        # schedule(): "Next, schedule the WAITING requests." -- only if nothing was preempted.
        if not preempted:
            admitted = self._admit_waiting(token_budget, thr, loras, scheduled)
        return scheduled, preempted, admitted

    def _admit_waiting(self, token_budget: int, thr: int, loras: set, scheduled: list) -> int:
        """The WAITING half of schedule(): FCFS admissions, appended to `scheduled`."""
        cfg, pool, bs = self.config, self.pool, self.bs
        running, waiting = self.running, self.waiting
        lora = cfg.enable_lora
        max_seqs, max_loras = cfg.max_num_seqs, cfg.max_loras
        chunked = cfg.enable_chunked_prefill
        full_check = self.rules.full_prompt_kv_check
        max_len = self.max_model_len
        run_adapters = self.run_adapters
        caching = pool.caching
        admitted = 0
        while token_budget > 0 and waiting.n:
            if len(running) >= max_seqs:
                break
            # max_loras gate: a request whose adapter would exceed max_loras is skipped, not
            # blocking; skipped requests keep their place at the head (WaitingQueue).
            req = waiting.head(loras if lora and len(loras) == max_loras else None)
            if req is None:
                break
            num_tokens = req.prompt + req.output
            if caching:
                hit_tokens, hit = pool.lookup(req, num_tokens)
                hit_blocks = pool.hit_blocks(hit)
                evictable = pool.evictable(hit)
            else:  # no prefix cache: no hits (saves the pool calls on every admission)
                hit_tokens, hit, hit_blocks, evictable = 0, None, 0, 0
            n = num_tokens - hit_tokens
            if 0 < thr < n:
                n = thr
            if not chunked and n > token_budget:
                break
            if n > token_budget:
                n = token_budget
            # allocate_slots(full_sequence_must_fit=scheduler_reserve_full_isl)
            if full_check:
                full_need = -(-min(num_tokens, max_len) // bs) - hit_blocks + evictable
                if full_need > pool.free:
                    break
            need = -(-(hit_tokens + n) // bs) - hit_blocks + evictable
            if need > pool.free:
                break
            waiting.pop(req)
            running.append(req)
            req.status = RUNNING
            req.computed = hit_tokens
            if caching:
                pool.admit(req, hit, -(-(hit_tokens + n) // bs))
                pool.commit(req, hit_tokens + n)
            else:  # CountingPool.admit, inlined (once per admission)
                pool.free -= need
                req.blocks = need
            scheduled.append((req, n))
            token_budget -= n
            admitted += 1
            a = req.adapter
            if a >= 0:
                if lora:
                    loras.add(a)
                c = run_adapters.get(a, 0)
                run_adapters[a] = c + 1
                if not c:
                    self._sorted_adapters = None
        return admitted

    def _preempt(self, req: Req) -> None:
        """Scheduler._preempt_request(): free KV, recompute later, back to the waiting head."""
        self.pool.release(req)
        req.computed = 0
        req.status = PREEMPTED
        req.preemptions += 1
        self._drop_adapter(req)
        self.waiting.appendleft(req)
        self.stats["preemptions"] += 1

    def _drop_adapter(self, req: Req) -> None:
        a = req.adapter
        if a >= 0:
            c = self.run_adapters[a] - 1
            if c:
                self.run_adapters[a] = c
            else:
                del self.run_adapters[a]
                self._sorted_adapters = None

    def _running_adapter_list(self) -> tuple[list[int], int]:
        """(running adapters in index order, sum of their ranks); cached because the set
        changes far less often than steps are priced."""
        cached = self._sorted_adapters
        if cached is None:
            adapters = sorted(self.run_adapters)
            cached = self._sorted_adapters = (adapters, sum(self.adapter_ranks[a] for a in adapters))
        return cached

    def _price(self, items, decode: int, kv: int) -> tuple[int, int, list[int], int, int]:
        """(duration ns, load ns, adapters, prefill tokens, decode seqs) of a step whose
        explicitly scheduled `items` are (request, tokens) and whose lazy decodes add
        `decode` sequences reading `kv` tokens."""
        prefill = pairs = 0
        for req, n in items:
            c = req.computed
            if n == 1 and c >= req.prompt:
                decode += 1
                kv += c + 1
            else:
                prefill += n
                pairs += n * c + n * (n + 1) // 2
        # vLLM activates the batch's adapters in set order; the twin uses index order
        if self._all_scheduled:
            adapters, rank_sum = self._running_adapter_list()
        else:
            if self._step_adapters is not None:
                adapters = self._step_adapters
            else:
                adapters = sorted({r.adapter for r, _ in items if r.adapter >= 0})
            rank_sum = 0
            for a in adapters:
                rank_sum += self.adapter_ranks[a]
        load = self.caches.use(adapters) if adapters else 0
        dur = self.model.jittered(self.now_ns, self.model.step_ns(
            decode, kv, prefill, pairs, len(adapters), rank_sum, len(self.running),
            self.waiting.n)) + load
        return dur, load, adapters, prefill, decode

    def _token(self, req: Req, step: int, end: int) -> bool:
        """`req` samples a token at the end of `step`; True when it is done."""
        req.output += 1
        if req.run_len and req.run_start + req.run_len == step:
            req.run_len += 1
        else:
            if req.run_len:
                if req.old_runs is None:
                    req.old_runs = []
                req.old_runs.append((req.run_start, req.run_len))
            req.run_start, req.run_len = step, 1
        done = req.output >= req.target
        if self.emit_tokens:
            self.events.append(TokenEvent(req.rid, end + self.model.output_ns, 1,
                                          req.output == 1, done))
        return done

    def _log(self, step, end, items, preempted, admitted, adapters, load, prefill, decode):
        new_reqs = [r for r, _ in items[len(items) - admitted:]] if admitted else []
        self.step_log.append({
            "step": step, "start_ns": self.now_ns, "end_ns": end, "batch": len(items),
            "prefill_tokens": prefill, "decode_seqs": decode, "kv_blocks_used": self.pool.used,
            "adapters": [self.adapter_names[a] for a in adapters], "load_ns": load,
            "preempted": [r.rid for r in preempted], "admitted": admitted,
            "new": [r.rid for r in new_reqs if not r.preemptions],
            "resumed": [r.rid for r in new_reqs if r.preemptions],
            "scheduled": [[r.rid, n] for r, n in items],
            "running": len(self.running), "waiting": len(self.waiting)})

    # ---- one step, explicitly (the reference) ---------------------------------------------
    def _step(self) -> bool:
        """Schedule and execute one engine step at `now_ns`. False if nothing was scheduled."""
        scheduled, preempted, admitted = self._schedule()
        if not scheduled:
            return False
        running_after_schedule = len(self.running)
        self._all_scheduled = False
        self._step_adapters = None
        dur, load, adapters, prefill, decode = self._price(scheduled, 0, 0)
        end = self.now_ns + dur
        step = self.step
        self.table.reserve(1, self._min_live_step)
        self.table.append(end)
        if self.step_log is not None:
            self._log(step, end, scheduled, preempted, admitted, adapters, load, prefill, decode)
        # _update_after_schedule() + update_from_output(): a request whose computed tokens
        # reach its length samples one token at the end of the step.
        finished = []
        chunks = 0
        for req, n in scheduled:
            req.computed += n
            if req.computed < req.prompt + req.output:
                chunks += 1  # still prefilling after this chunk
            elif self._token(req, step, end):
                finished.append(req)
        self.now_ns = end
        self.step = step + 1
        self.stats["steps"] += 1
        self.stats["events"] += 1
        self.stats["admissions"] += admitted
        if finished:
            self._finish(finished)
        # Next step's schedule() repeats this one (bar one more token each) when every running
        # request decodes and either nothing waits or this step already admitted nothing.
        self.all_decode = chunks == 0 and len(scheduled) == running_after_schedule
        self.stable = (self.all_decode and not admitted and not preempted and not finished
                       and decode == len(scheduled))
        return True

    def _finish(self, finished: list[Req]) -> None:
        if len(finished) > 1 and self.coalesce and self.pool.caching:
            # free in scheduling (running) order, as update_from_output does: the order of
            # freed blocks matters to the prefix cache's eviction order
            where = {id(r): i for i, r in enumerate(self.running)}
            finished.sort(key=lambda r: where[id(r)])
        run_adapters = self.run_adapters
        for req in finished:
            req.status = FINISHED
            a = req.adapter  # _drop_adapter, inlined
            if a >= 0:
                c = run_adapters[a] - 1
                if c:
                    run_adapters[a] = c
                else:
                    del run_adapters[a]
                    self._sorted_adapters = None
        if len(finished) <= 4:
            for req in finished:
                self.running.remove(req)
        else:
            self.running = [r for r in self.running if r.status == RUNNING]
        for req in finished:
            self.pool.release(req)
            self._finished(req)

    # ---- the coalesced mode: decoding requests advance implicitly -------------------------
    # A decoding request is "lazy": it is scheduled for one token in every step from step
    # `base` on, so its true state is computed/output + (self.step - base). Aggregates give
    # what a step needs without visiting it: how many decode (n_lazy), KV tokens they read
    # (sum_c), how many need a new block this step (phase), when the next one finishes (heap).
    def _could_admit(self) -> bool:
        """Whether the WAITING half of schedule() might admit someone now (conservative).
        False when nothing waits, running is full, or every waiting request would be skipped
        by the LoRA gate -- states that last until a finish or an arrival."""
        waiting = self.waiting
        if not waiting.n or len(self.running) >= self.config.max_num_seqs:
            return False
        if self.config.enable_lora and len(self.run_adapters) == self.config.max_loras:
            return waiting.head(self.run_adapters) is not None
        return True

    def _is_decoding(self, req: Req) -> bool:
        return req.output >= 1 and req.computed == req.prompt + req.output - 1

    def _lazify(self, req: Req) -> None:
        base = self.step
        req.lazy = True
        req.base = base
        c = req.computed - base
        self.sum_c += c
        self.phase[c % self.bs] += 1
        self.n_lazy += 1
        heapq.heappush(self.finish_heap,
                       (base + req.target - req.output - 1, req.wkey, base, id(req), req))

    def _materialize(self, req: Req, upto: int) -> None:
        """Make `req`'s fields exact as of step `upto` (it decoded in steps base..upto-1)."""
        k = upto - req.base
        c = req.computed - req.base
        self.sum_c -= c
        self.phase[c % self.bs] -= 1
        self.n_lazy -= 1
        req.lazy = False
        if k:
            req.computed += k
            req.output += k
            if req.run_len and req.run_start + req.run_len == req.base:
                req.run_len += k
            else:
                if req.run_len:
                    if req.old_runs is None:
                        req.old_runs = []
                    req.old_runs.append((req.run_start, req.run_len))
                req.run_start, req.run_len = req.base, k
        req.blocks = -(-req.computed // self.bs)

    def _materialize_all(self) -> None:
        for req in self.running:
            if req.lazy:
                self._materialize(req, self.step)
        self.finish_heap.clear()
        self.prefilling = []

    def _relazify(self) -> None:
        pre = []
        for req in self.running:
            if req.lazy:
                continue
            if self._is_decoding(req):
                self._lazify(req)
            else:
                pre.append(req)
        self.prefilling = pre

    def _next_finish(self) -> int | None:
        heap = self.finish_heap
        while heap:
            f, _, base, _, req = heap[0]
            if req.lazy and req.base == base and req.status == RUNNING:
                return f
            heapq.heappop(heap)
        return None

    def _pop_finishers(self, step: int) -> list[Req]:
        """Lazy requests whose last token is sampled in `step` (materialized)."""
        heap = self.finish_heap
        if not heap or heap[0][0] > step:
            return []  # the common case: nobody finishes in this step
        out: list[Req] = []
        while True:
            f = self._next_finish()
            if f is None or f != step:
                return out
            req = heapq.heappop(heap)[4]
            self._materialize(req, step + 1)
            out.append(req)

    def _fast_step(self) -> bool | None:
        """One step with lazy decodes. None (nothing changed) when the explicit loop is needed
        because the token budget or the KV blocks would not cover every running request;
        False when nothing could be scheduled."""
        cfg, pool, bs = self.config, self.pool, self.bs
        step = self.step
        # _threshold(), inlined: this runs about once per arrival
        thr = cfg.long_prefill_token_threshold
        if thr and self.rules.long_prefill_cap_only_if_contended \
                and len(self.running) + self.waiting.n <= 1:
            thr = 0
        max_len = self.max_model_len
        pre = self.prefilling
        running = self.running
        budget = cfg.max_num_batched_tokens
        items = []
        # Walk the running order in runs: lazy decodes take 1 token each, prefills their chunk;
        # where the budget runs out (schedule()'s `while ... token_budget > 0`) the rest of
        # `running` is not scheduled this step ("cut").
        consumed = 0
        prev = -1
        cut = None
        for j, req in enumerate(pre):
            idx = running.index(req) if len(pre) > 1 or running[-1] is not req else len(running) - 1
            lazy_here = idx - prev - 1
            if consumed + lazy_here >= budget:
                cut = prev + 1 + (budget - consumed)
                consumed = budget
                break
            consumed += lazy_here
            n = req.prompt + req.output - req.computed
            if 0 < thr < n:
                n = thr
            if n > max_len - req.computed - 1:
                return None
            if n >= budget - consumed:
                n = budget - consumed
                items.append((req, n))
                consumed = budget
                cut = idx + 1
                break
            items.append((req, n))
            consumed += n
            prev = idx
        else:
            tail = len(running) - prev - 1
            if consumed + tail > budget:
                cut = prev + 1 + (budget - consumed)
                consumed = budget
            else:
                consumed += tail
        skipped_lazy = []
        adapters = None
        if cut is not None and cut < len(running):
            # requests past the cut sit this step out: make the lazy ones explicit
            tail_counts: dict[int, int] = {}
            for req in running[cut:]:
                if req.lazy:
                    self._materialize(req, step)
                    skipped_lazy.append(req)
                if req.adapter >= 0:
                    tail_counts[req.adapter] = tail_counts.get(req.adapter, 0) + 1
            adapters = sorted(a for a, c in self.run_adapters.items() if c > tail_counts.get(a, 0))
        demand = consumed
        lazy_need = self.phase[(-step) % bs] if self.n_lazy else 0
        need = lazy_need
        for req, n in items:
            need += -(-(req.computed + n) // bs) - req.blocks
        if need > pool.free:
            return None
        # the RUNNING half of schedule(), all fits: allocate in running order
        if lazy_need:
            pool.take(lazy_need)
        for req, n in items:
            more = -(-(req.computed + n) // bs) - req.blocks
            if more > 0:
                pool.grow(req, more)
            if pool.caching:
                pool.commit(req, req.computed + n)
        n_pre = len(items)
        admitted = 0
        if demand < budget and self.waiting.n:
            loras = set(self.run_adapters) if cfg.enable_lora else set()
            admitted = self._admit_waiting(budget - demand, thr, loras, items)
        if not items and not self.n_lazy:
            return False  # nothing scheduled
        self._all_scheduled = adapters is None
        self._step_adapters = adapters
        kv = self.sum_c + self.n_lazy * (step + 1)
        dur, load, adapters, prefill, decode = self._price(items, self.n_lazy, kv)
        end = self.now_ns + dur
        table = self.table
        if table.size >= len(table.buf):
            table._grow(1, self._min_live_step)
        table.buf[table.size] = end
        table.size += 1
        if self.step_log is not None:
            self._log(step, end, self._explicit_items(items, step), [], admitted, adapters,
                      load, prefill, decode)
        if self.emit_tokens:
            out_ns = self.model.output_ns
            for req in self.running:
                if req.lazy:
                    o = req.output + step - req.base + 1
                    self.events.append(TokenEvent(req.rid, end + out_ns, 1, o == 1,
                                                  o >= req.target))
        heap = self.finish_heap  # nobody finishes in most steps: skip the call then
        finished = self._pop_finishers(step) if heap and heap[0][0] <= step else []
        still = []
        became_lazy = []
        for req, n in items:
            req.computed += n
            if req.computed < req.prompt + req.output:
                still.append(req)
            elif self._token(req, step, end):
                finished.append(req)
            elif req.computed == req.prompt + req.output - 1:  # _is_decoding (output >= 1 here)
                became_lazy.append(req)
            else:
                still.append(req)
        self.now_ns = end
        self.step = step + 1
        for req in became_lazy:
            self._lazify(req)
        for req in skipped_lazy:
            self._lazify(req)
        self.prefilling = still
        self.stats["steps"] += 1
        self.stats["events"] += 1
        self.stats["admissions"] += admitted
        if finished:
            self._finish(finished)
        self.all_decode = not still
        self.stable = self.all_decode and not admitted and not finished and n_pre == 0
        return True

    def _explicit_items(self, items, step):
        """(request, tokens) in running order for the step log (lazy ones decode 1)."""
        chunk = {id(r): n for r, n in items}
        return [(r, 1 if r.lazy else chunk[id(r)]) for r in self.running
                if r.lazy or id(r) in chunk]

    def _segment(self, until_ns: int) -> int:
        """Advance identical pure-decode steps at once; returns how many (0: take one step).

        A single step is a segment too: cheaper than `_fast_step` when nothing can be
        admitted (the next arrival often comes within one step)."""
        if self.prefilling or not self.n_lazy:
            return 0
        step0 = self.step
        f = self._next_finish()
        if f is None:  # (not with lazy decodes running)
            return 0
        r_min = f - step0 + 1  # the finishing step ends the segment
        if r_min < 1:
            return 0
        adapters, rank_sum = self._running_adapter_list()
        if adapters and not self.caches.all_resident(adapters):
            return 0
        b = self.n_lazy
        # step k >= 1 starts at the end of step k-1; it must start before the next arrival is
        # visible and no later than `until_ns`.
        limit = until_ns
        pos = self._incoming_pos  # next_arrival_ns(), inlined
        if pos < len(self.incoming) and self.incoming[pos][0] - 1 < limit:
            limit = self.incoming[pos][0] - 1
        ends = self.model.decode_segment_ends(self.now_ns, limit, min(r_min, SEGMENT_MAX_STEPS),
                                              b, self.sum_c + b * (step0 + 1), len(adapters),
                                              rank_sum, len(self.running), self.waiting.n)
        n = len(ends)
        # KV: every step must find its blocks; no block is freed within a segment, so the
        # total over the segment must fit in what is free now.
        free = self.pool.free
        blocks = self._blocks_for(step0, n)
        if blocks > free:
            lo, hi = 0, n
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._blocks_for(step0, mid) <= free:
                    lo = mid
                else:
                    hi = mid
            n = lo
            ends = ends[:n]
            blocks = self._blocks_for(step0, n)
        if n < 1:
            return 0
        self.pool.take(blocks)
        self.table.reserve(n, self._min_live_step)
        self.table.extend(ends[:n])
        if adapters:
            self.caches.use(adapters)
        if self.step_log is not None or self.emit_tokens:
            self._segment_details(step0, n, ends, adapters)
        self.now_ns = int(ends[-1])
        self.step = step0 + n
        last = step0 + n - 1  # most segments end at an arrival, not at a finish
        finished = self._pop_finishers(last) if self.finish_heap[0][0] <= last else []
        self.stats["steps"] += n
        self.stats["events"] += 1
        self.stats["segments"] += 1
        if finished:
            self._finish(finished)
        # nothing was admissible before the segment and nothing but KV (less free) changed
        self.stable = not finished
        return n

    def _blocks_for(self, step0: int, n: int) -> int:
        """New KV blocks the lazy decodes need over steps step0 .. step0+n-1."""
        bs, phase = self.bs, self.phase
        total = (n // bs) * self.n_lazy
        for s in range(step0, step0 + n % bs):
            total += phase[(-s) % bs]
        return total

    def _segment_details(self, step0: int, n: int, ends: list[int] | np.ndarray,
                         adapters: list[int]) -> None:
        out_ns = self.model.output_ns
        names = [self.adapter_names[a] for a in adapters]
        b = len(self.running)
        for k in range(n):
            step = step0 + k
            if self.emit_tokens:
                t = int(ends[k]) + out_ns
                for req in self.running:
                    o = req.output + step - req.base + 1
                    self.events.append(TokenEvent(req.rid, t, 1, o == 1, o >= req.target))
            if self.step_log is not None:
                start = self.now_ns if k == 0 else int(ends[k - 1])
                used = self.pool.used - self._blocks_for(step0, n) + self._blocks_for(step0, k + 1)
                self.step_log.append({
                    "step": step, "start_ns": start, "end_ns": int(ends[k]), "batch": b,
                    "prefill_tokens": 0, "decode_seqs": b, "kv_blocks_used": used,
                    "adapters": names, "load_ns": 0, "preempted": [], "admitted": 0,
                    "new": [], "resumed": [], "scheduled": [[r.rid, 1] for r in self.running],
                    "running": b, "waiting": len(self.waiting)})

    # ---- bookkeeping ----------------------------------------------------------------------
    def _min_live_step(self) -> int:
        m = self.step
        for req in self.running:
            f = req.first_step
            if 0 <= f < m:
                m = f
        for req in self.waiting:
            f = req.first_step
            if 0 <= f < m:
                m = f
        return m

    def _finished(self, req: Req, error: str | None = None, status: str | None = None) -> None:
        self.by_id.pop(req.rid, None)
        if self.on_finish is not None:
            self.on_finish(req, error, status)

    # ---- driving --------------------------------------------------------------------------
    def run(self, until_ns: int) -> None:
        """Execute every step that starts at or before `until_ns`."""
        while True:
            pos = self._incoming_pos  # _ingest() has work only when an arrival is due
            if pos < len(self.incoming) and self.incoming[pos][0] <= self.now_ns:
                self._ingest()
            if not self.running and not self.waiting.n:
                nxt = self.next_arrival_ns()
                if nxt is None or nxt > until_ns:
                    return
                if nxt > self.now_ns:
                    self.now_ns = nxt
                continue
            if self.now_ns > until_ns:
                return
            if self.coalesce:
                if self.all_decode and (self.stable or not self._could_admit()) \
                        and self._segment(until_ns):
                    continue
                done = self._fast_step()
                if done is None:  # budget or KV binds: the explicit loop, then lazy again
                    self._materialize_all()
                    done = self._step()
                    self._relazify()
            else:
                done = self._step()
            if not done:
                # nothing can be scheduled now (vLLM would idle): wait for the next arrival
                nxt = self.next_arrival_ns()
                if nxt is None or nxt > until_ns:
                    return
                self.now_ns = max(self.now_ns, nxt)

    def leftovers(self) -> list[Req]:
        """Requests not finished (running, waiting, not yet arrived), with exact state."""
        if self.coalesce:
            self._materialize_all()
            self._relazify()
            for req in self.running:
                if req.lazy:
                    self._materialize(req, self.step)
        out = list(self.running) + list(self.waiting)
        out += [it[2] for it in self.incoming[self._incoming_pos:] if it is not None]
        return out

    def advance(self, until_ns: int) -> list[TokenEvent]:
        """Run to `until_ns` and return the token events with time <= until_ns, in time order.

        Every step that starts at or before `until_ns` is executed (its tokens may be due
        later: they stay buffered). An idle engine's clock moves to `until_ns`."""
        self.run(until_ns)
        if not self.running and not self.waiting and self.now_ns < until_ns:
            self.now_ns = until_ns
        out = []
        ev = self.events
        while ev and ev[0].time_ns <= until_ns:
            out.append(ev.popleft())
        return out

    def next_event_ns(self) -> int | None:
        """When the next token event is due (or the next step can start), None if idle."""
        if self.events:
            return self.events[0].time_ns
        if self.running or self.waiting:
            return self.now_ns
        return self.next_arrival_ns()

    def abort(self, request_id: str) -> bool:
        """Scheduler.finish_requests(..., FINISHED_ABORTED): drop the request wherever it is."""
        req = self.by_id.get(request_id)
        if req is None or req.status in (FINISHED, ABORTED):
            return False
        if req.status == RUNNING:
            if req.lazy:
                self._materialize(req, self.step)
            if req in self.prefilling:
                self.prefilling.remove(req)
            self.running.remove(req)
            self._drop_adapter(req)
            self.pool.release(req)
            self.all_decode = not self.prefilling if self.coalesce else False
        else:
            self.waiting.remove(req)
        req.status = ABORTED
        self.stable = False
        if self.events:
            self.events = deque(e for e in self.events if e.request_id != request_id)
        self._finished(req, status="cancelled")
        return True
