"""Fit a profile's coefficients from measurements (scipy least squares, non-negative).

Input format (what calibration passes in): a sequence of rows, each a mapping with

    step rows (fit_step_time):
        step_ms            measured engine step duration, ms (model execution; scheduler
                           time excluded, or pass it and fit_scheduler separately)
        decode_seqs        B, sequences decoding one token in the step
        kv_tokens          K, context tokens those sequences read (sum of their lengths)
        prefill_tokens     P, prompt tokens computed in the step (0 for pure decode)
        attention_pairs    A, causal (query, key) pairs of the prefill chunks:
                           sum over chunks of n*c + n*(n+1)/2 (n new tokens after c cached)
        adapters           L, distinct LoRA adapters in the step (0 = base model only)
        rank_sum           R, sum of those adapters' ranks (optional, default 0)
        lora_server        bool, measured on a server started with --enable-lora
                           (optional, default: adapters > 0)
    scheduler rows (fit_scheduler): sched_ms, running, waiting
    load rows (fit_adapter_loads): load_ms, rank, kind = "cpu_to_gpu" | "disk_to_cpu"

Each fit returns a dict shaped like the profile section it replaces, ready for
`Profile.with_changes(step_time=..., scheduler=..., adapter_load=...)`, plus `fit_report`
(residual RMS, rows used). Coefficients are bounded at 0 where a negative value has no
physical meaning (all of them).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import least_squares, nnls

from twinbench.traces.errors import TwinbenchError

_BASE_TERMS = ("base_ms", "per_decode_seq_ms", "per_kv_token_ms", "per_prefill_token_ms",
               "per_prefill_attention_pair_ms")
# additive LoRA terms, outside the factor, in steps with an adapter active
_LORA_TERMS = ("per_lora_prefill_token_ms", "per_lora_step_ms")
# HTTP, tokenisation and streaming around the first step: fitted only when rows are TTFTs
FRONTEND = "frontend_ms"
# every additive coefficient, in the order of StepDesign.term_columns()
TERMS = _BASE_TERMS + _LORA_TERMS + (FRONTEND,)
LORA_FACTOR_KEYS = ("base", "per_adapter", "per_rank_unit", "base_only_on_lora_server")


class FitError(TwinbenchError):
    """Measurements that cannot determine the requested coefficients."""


def _column(rows: Sequence[Mapping[str, Any]], key: str, default: float | None = None) -> np.ndarray:
    try:
        return np.array([float(r.get(key, default) if default is not None else r[key])
                         for r in rows], dtype=np.float64)
    except KeyError:
        raise FitError(f"fit rows need the key {key!r}") from None
    except (TypeError, ValueError):
        raise FitError(f"fit rows: {key!r} must be numbers") from None


class StepDesign:
    """The columns of measured rows that the step-time model reads, built once per fit."""

    def __init__(self, rows: Sequence[Mapping[str, Any]]):
        self.X = np.column_stack([np.ones(len(rows)), _column(rows, "decode_seqs", 0),
                                  _column(rows, "kv_tokens", 0), _column(rows, "prefill_tokens", 0),
                                  _column(rows, "attention_pairs", 0)])
        self.L = _column(rows, "adapters", 0)
        self.R = _column(rows, "rank_sum", 0)
        self.lora_server = np.array([bool(r.get("lora_server", r.get("adapters", 0) > 0))
                                     for r in rows])
        # the LoRA terms: every prefill token, and the step itself, when an adapter is active;
        # rows measured as a TTFT (`ttft` true) also carry the frontend's fixed cost
        self.extra = {"per_lora_prefill_token_ms": np.where(self.L > 0, self.X[:, 3], 0.0),
                      "per_lora_step_ms": (self.L > 0).astype(np.float64),
                      FRONTEND: np.array([1.0 if r.get("ttft") else 0.0 for r in rows])}

    def term_columns(self) -> np.ndarray:
        """What each of `TERMS` multiplies, per row (the base terms before the LoRA factor)."""
        return np.column_stack([self.X] + [self.extra[n] for n in TERMS[len(_BASE_TERMS):]])

    def predict(self, step_time: Mapping[str, Any]) -> np.ndarray:
        """Step times (ms) a profile's `step_time` section gives these rows."""
        vals = {n: float(step_time.get(n, 0.0)) for n in TERMS}
        vals.update({f"lora.{k}": float(v) for k, v in step_time["lora_factor"].items()})
        return self.step_ms(vals)

    def step_ms(self, vals: Mapping[str, float]) -> np.ndarray:
        """The model (docs/profiles.md) with flat coefficients (`lora.base`, ...)."""
        base = self.X @ np.array([vals[n] for n in _BASE_TERMS])
        L = self.L
        factor = np.where(L > 0, vals["lora.base"] + vals["lora.per_adapter"] * L
                          + vals["lora.per_rank_unit"] * self.R,
                          np.where(self.lora_server, vals["lora.base_only_on_lora_server"], 1.0))
        return base * factor + sum(vals[n] * column for n, column in self.extra.items())


def predict_step_ms(rows: Sequence[Mapping[str, Any]], step_time: Mapping[str, Any]) -> np.ndarray:
    """Step times (ms) a profile's `step_time` section gives measured rows (no scheduler
    terms): the function `fit_step_time` fits, for fit-quality reports and plots."""
    return StepDesign(rows).predict(step_time)


def fit_step_time(rows: Sequence[Mapping[str, Any]], fix: Mapping[str, float] | None = None,
                  weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Fit the step-time model (docs/profiles.md) to measured steps.

    `fix` pins coefficients (e.g. {"per_prefill_attention_pair_ms": 0.0} when no prefill was
    measured). Terms with no variation in the data are pinned to 0 automatically, and with
    no base-only rows `lora_factor.base` is pinned to 1 (the base terms absorb it).
    `weights` (one per row, >= 0) scale each row's squared residual: calibration passes them
    so that a few prefill rows are not drowned by hundreds of decode segments.
    Rows with `ttft` true are times to first token (frontend + one prefill step): the
    frontend's fixed cost is then fitted with the rest and returned as `frontend_ms`.
    """
    if len(rows) < 2:
        raise FitError("fit_step_time needs at least 2 measured steps")
    y = _column(rows, "step_ms")
    design = StepDesign(rows)
    X, L, R, lora_server, extra = design.X, design.L, design.R, design.lora_server, design.extra
    if weights is None:
        sqrt_w = np.ones(len(rows))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(rows),) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise FitError("fit_step_time: weights must be one finite number >= 0 per row")
        sqrt_w = np.sqrt(w)
    fixed = dict(fix or {})
    for j, name in enumerate(_BASE_TERMS[1:], start=1):
        if name not in fixed and np.ptp(X[:, j]) == 0 and X[0, j] == 0:
            fixed[name] = 0.0
    has_lora = bool(np.any(L > 0))
    has_base_on_lora = bool(np.any((L == 0) & lora_server))
    has_no_lora = bool(np.any(~lora_server))
    names = list(TERMS) + [f"lora.{k}" for k in LORA_FACTOR_KEYS]
    for name, column in extra.items():
        if not np.any(column > 0):
            fixed.setdefault(name, 0.0)
    if not has_lora:
        fixed.update({"lora.base": 1.0, "lora.per_adapter": 0.0, "lora.per_rank_unit": 0.0})
    elif not has_no_lora and not has_base_on_lora:
        fixed["lora.base"] = 1.0
    if not np.any(R > 0):
        fixed.setdefault("lora.per_rank_unit", 0.0)
    if not has_base_on_lora:
        fixed.setdefault("lora.base_only_on_lora_server", 1.0)
    free = [n for n in names if n not in fixed]

    def unpack(theta: np.ndarray) -> dict[str, float]:
        vals = dict(fixed)
        vals.update(zip(free, theta))
        return vals

    predict = design.step_ms

    # start from a non-negative linear fit of the base terms
    cols = [j for j, n in enumerate(_BASE_TERMS) if n in free]
    start = dict.fromkeys(free, 0.0)
    if cols:
        coef, _ = nnls(X[:, cols] / np.maximum(X[:, cols].max(axis=0), 1e-30), y)
        for j, c in zip(cols, coef):
            start[_BASE_TERMS[j]] = c / max(X[:, j].max(), 1e-30)
    for n, v in (("per_lora_prefill_token_ms",
                  float(start.get("per_prefill_token_ms", 0.0)) or 1e-3),
                 ("per_lora_step_ms", 0.1 * float(start.get("base_ms", 0.0)) or 1e-3),
                 (FRONTEND, float(start.get("base_ms", 0.0)) or 1.0),
                 ("lora.base", 1.0), ("lora.base_only_on_lora_server", 1.0),
                 ("lora.per_adapter", 0.01), ("lora.per_rank_unit", 1e-4)):
        if n in start:
            start[n] = v
    theta0 = np.array([start[n] for n in free]) if free else np.zeros(0)
    if free:
        # parameter scales: a term's typical size, so a zero start does not freeze it
        typical = {n: float(np.mean(np.abs(y))) / max(float(X[:, j].max()), 1e-30) * 1e-2
                   for j, n in enumerate(_BASE_TERMS)}
        for name, column in extra.items():
            typical[name] = float(np.mean(np.abs(y))) / max(float(column.max()), 1e-30) * 1e-2
        scale = np.array([max(abs(start[n]), typical.get(n, 0.01)) for n in free])
        res = least_squares(lambda th: sqrt_w * (predict(unpack(th * scale)) - y), theta0 / scale,
                            bounds=(0.0, np.inf), method="trf", x_scale="jac")
        vals = unpack(res.x * scale)
    else:
        vals = unpack(theta0)
    resid = predict(vals) - y
    out: dict[str, Any] = {n: float(vals[n]) for n in _BASE_TERMS}
    for name in _LORA_TERMS:
        out[name] = float(vals[name])
    if FRONTEND not in fixed:  # not a step-time coefficient: only reported when fitted
        out[FRONTEND] = float(vals[FRONTEND])
    out["lora_factor"] = {k.split(".", 1)[1]: float(vals[k]) for k in names if k.startswith("lora.")}
    out["fit_report"] = {"rows": len(rows), "rms_ms": float(np.sqrt(np.mean(resid ** 2))),
                         "max_abs_ms": float(np.max(np.abs(resid))),
                         "fixed": sorted(fixed), "free": free}
    return out


def fit_scheduler(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """sched_ms = base + per_running·running + per_waiting·waiting, coefficients >= 0."""
    if not rows:
        raise FitError("fit_scheduler needs measured rows")
    y = _column(rows, "sched_ms")
    X = np.column_stack([np.ones(len(rows)), _column(rows, "running", 0),
                         _column(rows, "waiting", 0)])
    coef, rnorm = nnls(X, y)
    return {"base_ms": float(coef[0]), "per_running_ms": float(coef[1]),
            "per_waiting_ms": float(coef[2]),
            "fit_report": {"rows": len(rows), "rms_ms": float(rnorm / np.sqrt(len(rows)))}}


def fit_adapter_loads(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """load_ms = a + b·rank per kind (cpu_to_gpu, disk_to_cpu), coefficients >= 0."""
    out: dict[str, Any] = {}
    for kind in ("cpu_to_gpu", "disk_to_cpu"):
        mine = [r for r in rows if r.get("kind") == kind]
        if not mine:
            continue
        y = _column(mine, "load_ms")
        X = np.column_stack([np.ones(len(mine)), _column(mine, "rank")])
        coef, _ = nnls(X, y)
        out[f"{kind}_ms"] = float(coef[0])
        out[f"{kind}_per_rank_ms"] = float(coef[1])
    if not out:
        raise FitError("fit_adapter_loads: rows need kind 'cpu_to_gpu' or 'disk_to_cpu'")
    return out
