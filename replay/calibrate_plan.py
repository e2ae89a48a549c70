"""The black-box profiling plan of `twinbench calibrate`: which batches to send, scaled to a budget.

A plan is a list of `PlanPoint`s, each one closed-loop batch: `concurrency` identical requests
sent together (prompt, output length, adapters cycled over the batch), repeated `repeats` times.
What each kind of point measures:

    decode   steady decode steps vs batch size B and context (chunk gaps of the batch)
    prefill  one request's first step vs prompt length (TTFT; chunking when prompts exceed
             max_num_batched_tokens)
    lora     decode and prefill with 1..k distinct adapters in the batch (LoRA overhead vs
             distinct adapters and their ranks)
    load     cold vs warm first use of an adapter (load cost; a fresh runtime-registered name
             forces a disk load where the server allows runtime loading)

`build_plan` lays out the full plan from the server's limits; `scale_to_budget` shrinks output
lengths and repeats and drops the least important points until the estimated wall time fits
(`est_s` uses a step-time guess that the first measurement refines).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

FULL_BUDGET_S = 300.0   # the budget the full plan is laid out for
MAX_REPEAT_SCALE = 4     # a generous budget buys repeats, not new points
MAX_PROMPT = 4096        # longer prompts extrapolate from the fitted per-token terms
MIN_OUTPUT = 12         # decode points keep at least this many steps to read gaps from


@dataclass(frozen=True)
class PlanFacts:
    """What the plan is built from (server limits read or given before profiling)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    max_loras: int
    adapters: tuple[tuple[str, int], ...]   # (name, rank) the user allows us to use
    runtime_loading: bool = False            # fresh adapter names can be registered


@dataclass(frozen=True)
class PlanPoint:
    kind: str                      # decode | prefill | lora | load
    concurrency: int
    prompt_tokens: int
    output_tokens: int
    adapters: tuple[str | None, ...] = (None,)   # cycled over the batch; None = base model
    repeats: int = 1
    priority: int = 1              # 1 = essential ... 3 = nice to have
    note: str = ""

    def est_s(self, step_ms: float, overhead_s: float = 0.15) -> float:
        """Rough wall time: prefill + decode steps, per repeat, plus client overhead."""
        lora = 2.0 if any(a is not None for a in self.adapters) else 1.0
        prefill_ms = step_ms * lora * (1 + self.concurrency * self.prompt_tokens / 256)
        decode_ms = step_ms * lora * (1 + self.concurrency / 16) * self.output_tokens
        return self.repeats * ((prefill_ms + decode_ms) / 1000 + overhead_s)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adapters"] = list(self.adapters)
        return d


def _concurrencies(max_num_seqs: int) -> list[int]:
    out = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_num_seqs]
    if max_num_seqs not in out:
        out.append(max_num_seqs)
    return out


def build_plan(f: PlanFacts) -> list[PlanPoint]:
    """The full plan (laid out for `FULL_BUDGET_S`), most important points first."""
    mml = f.max_model_len
    short_p = min(32, mml // 8)
    long_p = min(512, mml // 2, f.max_num_batched_tokens // 2)
    out_long = max(MIN_OUTPUT, min(160, mml - long_p - 8))
    points: list[PlanPoint] = []
    batches = _concurrencies(f.max_num_seqs)
    # decode step vs batch size (short context) and vs context (long prompts)
    # the smallest batches get more repeats: they are cheap, they set the step of a lightly
    # loaded server (every workload's ITL at low load), and the server's speed drifts by
    # ±15 % over seconds, so a few repeats sample it poorly
    for b in batches:
        points.append(PlanPoint("decode", b, short_p, 128, repeats=2 if b <= 2 else 1,
                                priority=1 if b in (1, batches[len(batches) // 2], batches[-1])
                                else 2, note="decode step vs batch size"))
    for b in batches[::2] + ([batches[-1]] if len(batches) % 2 == 0 else []):
        points.append(PlanPoint("decode", b, long_p, out_long, priority=1 if b == batches[-1]
                                else 2, note="decode step vs context"))
    # prefill cost per token (single request: its TTFT is one prefill step)
    # prompt lengths up to one step's token budget (longer ones are chunked over several
    # steps and measured once, below) and at most MAX_PROMPT tokens
    top = min(mml - 8, f.max_num_batched_tokens, MAX_PROMPT)
    lengths = sorted({p for p in (16, 64, 128, 256, 384, 512, 768, 1024, 2048, 4096, top)
                      if 8 <= p <= top})
    for p in lengths:
        points.append(PlanPoint("prefill", 1, p, 2, repeats=3,
                                priority=1 if p in (lengths[0], lengths[len(lengths) // 2],
                                                    lengths[-1]) else 2,
                                note="prefill step vs prompt length"))
    if mml - 8 > f.max_num_batched_tokens:  # a prompt that must be chunked
        points.append(PlanPoint("prefill", 1, min(mml - 8, 2 * f.max_num_batched_tokens), 2,
                                repeats=2, priority=3, note="chunked prefill (check)"))
    # LoRA: 1..k distinct adapters in a decode batch, and LoRA prefill
    names = [n for n, _ in f.adapters]
    if names:
        k = min(len(names), f.max_loras)
        b_lora = min(max(8, k), f.max_num_seqs)
        for n_distinct in range(1, k + 1):
            points.append(PlanPoint("lora", b_lora, short_p, 96,
                                    adapters=tuple(names[:n_distinct]),
                                    priority=1 if n_distinct in (1, k) else 2,
                                    note=f"decode with {n_distinct} distinct adapter(s)"))
        # one adapter of each other rank: separates the rank term from the adapter count
        seen_ranks = {f.adapters[0][1]}
        for name, rank in f.adapters[1:]:
            if rank and rank not in seen_ranks:
                seen_ranks.add(rank)
                points.append(PlanPoint("lora", b_lora, short_p, 96, adapters=(name,),
                                        priority=1, note=f"decode with one rank-{rank} adapter"))
        # small batches too: the LoRA cost is not one ratio of the base step (a fixed part
        # dominates at 1-4 sequences on the CPU build)
        for b in sorted({1, 2, 4, batches[-1]} & set(range(1, f.max_num_seqs + 1))):
            if b != b_lora:
                points.append(PlanPoint("lora", b, short_p, 96, adapters=(names[0],),
                                        priority=1 if b in (1, 4) else 2,
                                        note="LoRA decode vs batch size"))
        points.append(PlanPoint("lora", min(4, f.max_num_seqs), long_p, out_long // 2,
                                adapters=tuple(names[:k]), priority=2,
                                note="LoRA decode vs context"))
        # a mixed batch: base requests pay the LoRA cost too when an adapter is active
        points.append(PlanPoint("lora", min(8, f.max_num_seqs), short_p, 96,
                                adapters=(None, names[0]), priority=1,
                                note="base and adapter requests in one batch"))
        for p in lengths[::2] + [lengths[-1]]:
            points.append(PlanPoint("lora", 1, p, 2, adapters=(names[0],), repeats=3,
                                    priority=1 if p in (lengths[0], lengths[-1]) else 2,
                                    note="LoRA prefill vs prompt length"))
        # cold vs warm first use: needs adapters to evict (more than max_loras) or fresh names
        if len(names) > f.max_loras or f.runtime_loading:
            for name in names[:3]:
                points.append(PlanPoint("load", 1, 16, 2, adapters=(name,), repeats=2,
                                        priority=1 if name == names[0] else 3,
                                        note="cold vs warm adapter first use"))
    return _interleave(points)


def _interleave(points: list[PlanPoint]) -> list[PlanPoint]:
    """By priority; within one, kinds take turns so that a small budget still covers each."""
    def group(p: PlanPoint) -> str:
        return p.kind + (":prefill" if p.output_tokens <= 2 else "")

    out: list[PlanPoint] = []
    for prio in sorted({p.priority for p in points}):
        queues: dict[str, list[PlanPoint]] = {}
        for p in points:
            if p.priority == prio:
                queues.setdefault(group(p), []).append(p)
        while any(queues.values()):
            for q in queues.values():
                if q:
                    out.append(q.pop(0))
    return out


def scale_to_budget(points: list[PlanPoint], budget_s: float, step_ms: float) -> list[PlanPoint]:
    """Fit the plan to `budget_s` at `step_ms` per step (estimated).

    A plan that fits several times over gets more repeats (less noise per point, at most
    `MAX_REPEAT_SCALE` times). Otherwise output lengths and repeats are scaled by budget /
    full budget (never below `MIN_OUTPUT` steps or 1 repeat), then the least important points
    are dropped until the estimate fits; at least the first point is always kept.
    """
    full_cost = plan_cost_s(points, step_ms)
    if full_cost * 1.5 <= budget_s:
        times = min(MAX_REPEAT_SCALE, int(budget_s * 0.85 // full_cost))
        return [replace(p, repeats=p.repeats * times) for p in points]
    scale = min(1.0, budget_s / FULL_BUDGET_S)
    scaled = []
    for p in points:
        out = p.output_tokens
        if p.kind in ("decode", "lora") and out > MIN_OUTPUT:
            out = max(MIN_OUTPUT, int(round(out * max(scale, 0.25))))
        reps = max(1, int(round(p.repeats * scale))) if p.repeats > 1 else 1
        scaled.append(replace(p, output_tokens=out, repeats=reps))
    kept: list[PlanPoint] = []
    total = 0.0
    for p in scaled:
        cost = p.est_s(step_ms)
        if kept and total + cost > budget_s:
            continue
        kept.append(p)
        total += cost
    return kept


def plan_cost_s(points: list[PlanPoint], step_ms: float) -> float:
    return sum(p.est_s(step_ms) for p in points)
