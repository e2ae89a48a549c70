"""The step-time model in exact integer arithmetic.

    model   = base + per_decode_seq·B + per_kv_token·K + per_prefill_token·P
              + per_prefill_attention_pair·A                                  (femtoseconds)
    lora_x  = per_lora_step + per_lora_prefill_token·P   if L ≥ 1, else 0      (femtoseconds)
    factor  = lora.base + lora.per_adapter·L + lora.per_rank_unit·R   if L ≥ 1 adapters
            = lora.base_only_on_lora_server                           if L = 0, LoRA enabled
            = 1                                                        if LoRA disabled
    step_ns = (model // 1000) · factor_bp // 10⁴ // 1000 + lora_x // 10⁶
              + (sched.base + sched.per_running·running + sched.per_waiting·waiting) // 10⁶
              + adapter load ns

B = decoding sequences, K = their context tokens (KV read), P = prefill tokens, A = causal
(query, key) pairs of the prefill chunks, L / R = distinct adapters / sum of their ranks.
The LoRA prefill term is separate from the factor because adapters slow prefill and decode by
different ratios: on the vLLM CPU build a prefill token costs ~2.5x with LoRA active but a
decode step ~1.9x. It applies to every prefill token of a step with an adapter active, base
requests' included: vLLM's CPU LoRA ops (`vllm/lora/ops/torch_ops/lora_ops.py`, bgmv_*)
gather the adapter weights for every token of the batch (`lora_b_weights[indices]`).
`per_lora_step` is a LoRA step's fixed cost (index building and per-layer kernel launches,
which dominate on small batches: LoRA decode costs ~11 ms more than base at 1 to 4 sequences
on the CPU build, not a constant ratio).
Coefficients are rounded once to integers (femtoseconds, factor in 1/10⁴), so a step's
duration is the same integer whether computed alone or for a whole segment at once with NumPy
(`decode_segment_ns`): the coalesced and step-by-step modes agree bit for bit.

Speed variation (the profile's optional `step_jitter`): a real server's steps of one shape
are not all equal. On the vLLM CPU build one-sequence decode steps lie anywhere in 7-13 ms,
in runs of a few tens of steps at one level (the machine's speed drifts; see
docs/calibration.md). The twin models that as a multiplier on the whole step that is
constant within a window of simulated time: a step starting at t lasts
`step_ns · jitter_bp[(t // window_ns) mod 65536] // 10⁴`, the table drawn once from a
log-normal with mean 1 (so throughput is unchanged on average) from the profile's seed. It
depends only on the step's start time, so both engine modes still agree bit for bit and a
run is still reproducible; without `step_jitter` (every built-in GPU profile) nothing changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinbench.twin.profile import Profile

_FS_PER_MS = 10**12
_BP = 10_000
_PYTHON_SEGMENT_MAX = 48  # segments up to this many steps: a Python loop beats NumPy's overhead
_JITTER_TABLE = 1 << 16  # windows before the speed-variation table repeats


def _fs(ms: float) -> int:
    return int(round(float(ms) * _FS_PER_MS))


@dataclass(frozen=True)
class StepModel:
    base_fs: int
    decode_seq_fs: int
    kv_token_fs: int
    prefill_token_fs: int
    attention_pair_fs: int
    lora_prefill_token_fs: int
    lora_step_fs: int
    lora_base_bp: int
    lora_adapter_bp: int
    lora_rank_bp: int
    base_only_bp: int
    sched_base_fs: int
    sched_running_fs: int
    sched_waiting_fs: int
    disk_to_cpu_fs: int
    disk_to_cpu_rank_fs: int
    cpu_to_gpu_fs: int
    cpu_to_gpu_rank_fs: int
    input_ns: int
    output_ns: int
    lora_enabled: bool
    jitter_window_ns: int = 0                 # 0: no speed variation
    jitter_bp: tuple[int, ...] = ()          # per-window multipliers, 1/10⁴

    @staticmethod
    def from_profile(profile: Profile, lora_enabled: bool = True) -> "StepModel":
        st, sc = profile.section("step_time"), profile.section("scheduler")
        lf, ld = st["lora_factor"], profile.section("adapter_load")
        fe = profile.data.get("frontend", {})
        return StepModel(
            base_fs=_fs(st["base_ms"]), decode_seq_fs=_fs(st["per_decode_seq_ms"]),
            kv_token_fs=_fs(st["per_kv_token_ms"]), prefill_token_fs=_fs(st["per_prefill_token_ms"]),
            attention_pair_fs=_fs(st["per_prefill_attention_pair_ms"]),
            lora_prefill_token_fs=_fs(st.get("per_lora_prefill_token_ms", 0.0)),
            lora_step_fs=_fs(st.get("per_lora_step_ms", 0.0)),
            lora_base_bp=int(round(lf["base"] * _BP)), lora_adapter_bp=int(round(lf["per_adapter"] * _BP)),
            lora_rank_bp=int(round(lf["per_rank_unit"] * _BP)),
            base_only_bp=int(round(lf["base_only_on_lora_server"] * _BP)),
            sched_base_fs=_fs(sc["base_ms"]), sched_running_fs=_fs(sc["per_running_ms"]),
            sched_waiting_fs=_fs(sc["per_waiting_ms"]),
            disk_to_cpu_fs=_fs(ld["disk_to_cpu_ms"]), disk_to_cpu_rank_fs=_fs(ld["disk_to_cpu_per_rank_ms"]),
            cpu_to_gpu_fs=_fs(ld["cpu_to_gpu_ms"]), cpu_to_gpu_rank_fs=_fs(ld["cpu_to_gpu_per_rank_ms"]),
            input_ns=_fs(fe.get("input_ms", 0.0)) // 10**6,
            output_ns=_fs(fe.get("output_ms", 0.0)) // 10**6,
            lora_enabled=lora_enabled,
            **_jitter_fields(profile.data.get("step_jitter")),
        )

    def jittered(self, start_ns: int, dur_ns: int) -> int:
        """A step of nominal `dur_ns` starting at `start_ns`, with the speed of its window."""
        if not self.jitter_window_ns:
            return dur_ns
        return dur_ns * self.jitter_bp[(start_ns // self.jitter_window_ns) & (_JITTER_TABLE - 1)] // _BP

    def factor_bp(self, n_adapters: int, rank_sum: int) -> int:
        if n_adapters:
            return self.lora_base_bp + self.lora_adapter_bp * n_adapters + self.lora_rank_bp * rank_sum
        return self.base_only_bp if self.lora_enabled else _BP

    def step_ns(self, decode_seqs: int, kv_tokens: int, prefill_tokens: int, attention_pairs: int,
                n_adapters: int, rank_sum: int, running: int, waiting: int) -> int:
        """One step's duration without adapter loads."""
        model_fs = (self.base_fs + self.decode_seq_fs * decode_seqs + self.kv_token_fs * kv_tokens
                    + self.prefill_token_fs * prefill_tokens + self.attention_pair_fs * attention_pairs)
        model_ns = (model_fs // 1000) * self.factor_bp(n_adapters, rank_sum) // _BP // 1000
        if n_adapters:
            model_ns += (self.lora_step_fs + self.lora_prefill_token_fs * prefill_tokens) // 10**6
        return model_ns + self._sched_ns(running, waiting)

    def decode_segment_ns(self, n_steps: int, decode_seqs: int, kv_tokens0: int,
                          n_adapters: int, rank_sum: int, running: int, waiting: int) -> np.ndarray:
        """Durations of `n_steps` pure-decode steps whose KV read grows by `decode_seqs` a step.

        Equal, element by element, to calling `step_ns` for each step (integer arithmetic).
        """
        kv = kv_tokens0 + decode_seqs * np.arange(n_steps, dtype=np.int64)
        model_fs = (self.base_fs + self.decode_seq_fs * decode_seqs) + self.kv_token_fs * kv
        model_ns = (model_fs // 1000) * self.factor_bp(n_adapters, rank_sum) // _BP // 1000
        return model_ns + self._constant_ns(n_adapters, running, waiting)

    def _sched_ns(self, running: int, waiting: int) -> int:
        return (self.sched_base_fs + self.sched_running_fs * running
                + self.sched_waiting_fs * waiting) // 10**6

    def _constant_ns(self, n_adapters: int, running: int, waiting: int) -> int:
        """What a pure-decode step adds to its scaled model time: the scheduler and the LoRA
        step cost (the same integers as in `step_ns`)."""
        return self._sched_ns(running, waiting) + (self.lora_step_fs // 10**6 if n_adapters else 0)

    def decode_segment_ends(self, start_ns: int, limit_ns: int, max_steps: int, decode_seqs: int,
                            kv_tokens0: int, n_adapters: int, rank_sum: int, running: int,
                            waiting: int) -> list[int] | np.ndarray:
        """End times of consecutive pure-decode steps, the first starting at `start_ns`.

        A step after the first starts when the previous one ends and must start at or before
        `limit_ns`, so the segment stops at the first step that ends after `limit_ns` (which is
        included), or after `max_steps`. Same integers as `step_ns` step by step.
        """
        fbp = self.factor_bp(n_adapters, rank_sum)
        const_ns = self._constant_ns(n_adapters, running, waiting)
        fs = self.base_fs + self.decode_seq_fs * decode_seqs + self.kv_token_fs * kv_tokens0
        fs_step = self.kv_token_fs * decode_seqs
        if self.jitter_window_ns:
            return self._jittered_segment_ends(start_ns, limit_ns, max_steps, fs, fs_step, fbp,
                                               const_ns)
        first_ns = (fs // 1000) * fbp // _BP // 1000 + const_ns
        bound = max_steps
        if first_ns > 0 and fs_step >= 0 and fbp >= 0:
            # durations never shrink, so at most (limit - start) // first steps end by the limit:
            # most segments end at the next arrival after a few steps, not worth NumPy's setup
            bound = min(bound, 1 + max(0, (limit_ns - start_ns) // first_ns))
        if bound <= _PYTHON_SEGMENT_MAX:
            ends = []
            t = start_ns
            for _ in range(bound):
                t += (fs // 1000) * fbp // _BP // 1000 + const_ns
                ends.append(t)
                if t > limit_ns:
                    break
                fs += fs_step
            return ends
        durs = self.decode_segment_ns(bound, decode_seqs, kv_tokens0, n_adapters, rank_sum,
                                      running, waiting)
        arr = start_ns + np.cumsum(durs)
        return arr[:1 + int(np.searchsorted(arr[:bound - 1], limit_ns, side="right"))]

    def _jittered_segment_ends(self, start_ns: int, limit_ns: int, max_steps: int, fs: int,
                               fs_step: int, fbp: int, const_ns: int) -> list[int]:
        """`decode_segment_ends` with speed variation: step by step, each step scaled by its
        start's window (durations may shrink, so no bound from the first step)."""
        ends = []
        t = start_ns
        for _ in range(max_steps):
            t += self.jittered(t, (fs // 1000) * fbp // _BP // 1000 + const_ns)
            ends.append(t)
            if t > limit_ns:
                break
            fs += fs_step
        return ends

    def load_ns(self, rank: int, from_disk: bool) -> int:
        fs = self.cpu_to_gpu_fs + self.cpu_to_gpu_rank_fs * rank
        if from_disk:
            fs += self.disk_to_cpu_fs + self.disk_to_cpu_rank_fs * rank
        return fs // 10**6


def _jitter_fields(section: dict | None) -> dict:
    """StepModel fields for a profile's `step_jitter` ({sigma, window_ms, seed}), none if absent."""
    if not section or float(section.get("sigma", 0.0)) <= 0 or float(section.get("window_ms", 0.0)) <= 0:
        return {}
    return {"jitter_window_ns": int(round(float(section["window_ms"]) * 1e6)),
            "jitter_bp": _jitter_table(float(section["sigma"]), int(section.get("seed", 0)))}


_TABLES: dict[tuple[float, int], tuple[int, ...]] = {}


def _jitter_table(sigma: float, seed: int) -> tuple[int, ...]:
    """The per-window multipliers (1/10⁴), log-normal with mean 1; built once per (sigma,
    seed): the advisor and clusters build many engines from one profile."""
    key = (sigma, seed)
    table = _TABLES.get(key)
    if table is None:
        z = np.random.default_rng(seed).standard_normal(_JITTER_TABLE)
        mult = np.exp(sigma * z - sigma * sigma / 2)
        table = _TABLES[key] = tuple(int(v) for v in np.rint(mult * _BP))
    return table
