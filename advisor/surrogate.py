"""A surrogate of the twin for the adapter questions: answers in milliseconds.

Trained on twin runs over many workloads; predicts, for one server's adapter load and its
`max_loras`, the output throughput and whether anything starves. Interpretable on purpose:
- `linear` (NumPy only): ridge regression of log throughput and a ridge-logistic starvation
  classifier on a dozen named, standardised features; coefficients say what drives the answer;
- `trees` (scikit-learn, extra `surrogate`): small gradient-boosted trees (depth 3) on the
  same features; feature importances say what matters.
`kind="auto"` takes trees when scikit-learn is installed. The advisor never trusts it alone:
the twin confirms every final answer.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

FEATURES = ("log_offered_tok_s", "log_offered_out_tok_s", "log_requests_s", "n_adapters",
            "log_n_adapters", "max_loras", "log_slots_ratio", "hot_share", "cold_rate_s",
            "mean_rank", "max_rank", "mean_prompt", "mean_output", "log_kv_capacity_tokens")


@dataclass(frozen=True)
class ReplicaLoad:
    """What one server is asked to serve: per-adapter request rates and ranks, mean lengths."""

    rates: tuple[float, ...]
    ranks: tuple[int, ...]
    mean_prompt: float
    mean_output: float

    def subset(self, idx: Sequence[int]) -> "ReplicaLoad":
        return ReplicaLoad(tuple(self.rates[i] for i in idx), tuple(self.ranks[i] for i in idx),
                           self.mean_prompt, self.mean_output)


def features(load: ReplicaLoad, max_loras: int, kv_capacity_tokens: float) -> np.ndarray:
    """The named features (FEATURES order) of serving `load` with `max_loras` GPU slots."""
    return features_many(load, [max_loras], [kv_capacity_tokens])[0]


def features_many(load: ReplicaLoad, slot_choices: Sequence[int],
                  kv_capacity_tokens: Sequence[float]) -> np.ndarray:
    """Feature rows of one load under several `max_loras` (vectorised: the grid answer)."""
    rates = np.sort(np.asarray(load.rates, dtype=float))[::-1]
    top = np.concatenate([[0.0], np.cumsum(rates)])
    total = float(top[-1])
    n = len(rates)
    slots = np.asarray(slot_choices, dtype=float)
    hot_sum = top[np.minimum(slots, n).astype(int)]
    ranks = np.asarray(load.ranks, dtype=float)
    offered = total * (load.mean_prompt + load.mean_output)
    k = len(slots)
    const = lambda v: np.full(k, float(v))  # noqa: E731
    return np.column_stack([
        const(math.log1p(offered)), const(math.log1p(total * load.mean_output)),
        const(math.log1p(total)), const(n), const(math.log(max(n, 1))), slots,
        np.log(slots / max(n, 1)), hot_sum / total if total > 0 else const(1.0),
        total - hot_sum,  # requests/s that may need an adapter swap
        const(ranks.mean() if n else 0.0), const(ranks.max() if n else 0.0),
        const(load.mean_prompt), const(load.mean_output),
        np.log1p(np.maximum(np.asarray(kv_capacity_tokens, dtype=float), 0.0)),
    ])


@dataclass
class Sample:
    x: np.ndarray           # features()
    throughput: float       # output tokens/s by the twin
    starving: bool          # twin verdict (served < 90 % or any adapter starving)
    meta: dict = field(default_factory=dict)


def smape(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of 100·|a−b| / ((|a|+|b|)/2), 0/0 = 0 (DESIGN §3)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    den = (np.abs(a) + np.abs(b)) / 2
    return float(np.mean(np.where(den > 0, 100 * np.abs(a - b) / np.where(den > 0, den, 1), 0)))


# ---- models ---------------------------------------------------------------------------
@dataclass
class LinearSurrogate:
    """Ridge on standardised features: log(1+throughput) and logistic P(starving)."""

    mean: np.ndarray
    scale: np.ndarray
    w_tput: np.ndarray      # [intercept, coefs...]
    w_starve: np.ndarray
    kind: str = "linear"

    @staticmethod
    def fit(X: np.ndarray, y_tput: np.ndarray, y_starve: np.ndarray,
            ridge: float = 1e-2) -> "LinearSurrogate":
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale[scale == 0] = 1.0
        Z = np.hstack([np.ones((len(X), 1)), (X - mean) / scale])
        penalty = ridge * np.eye(Z.shape[1])
        penalty[0, 0] = 0.0
        w_t = np.linalg.solve(Z.T @ Z + penalty, Z.T @ np.log1p(y_tput))
        w_s = _logistic_irls(Z, y_starve.astype(float), penalty + 1e-6 * np.eye(Z.shape[1]))
        return LinearSurrogate(mean, scale, w_t, w_s)

    def _z(self, X: np.ndarray) -> np.ndarray:
        return np.hstack([np.ones((len(X), 1)), (X - self.mean) / self.scale])

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Z = self._z(np.atleast_2d(X))
        return np.expm1(Z @ self.w_tput), (Z @ self.w_starve) > 0.0

    def explain(self) -> dict:
        """Standardised coefficients: the effect of one standard deviation of each feature."""
        return {"log_throughput": dict(zip(FEATURES, self.w_tput[1:].round(4).tolist())),
                "starving_logit": dict(zip(FEATURES, self.w_starve[1:].round(4).tolist()))}


def _logistic_irls(Z: np.ndarray, y: np.ndarray, penalty: np.ndarray, iters: int = 50) -> np.ndarray:
    w = np.zeros(Z.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ w, -30, 30)))
        grad = Z.T @ (p - y) + penalty @ w
        hess = (Z * (p * (1 - p))[:, None]).T @ Z + penalty
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


@dataclass
class TreeSurrogate:
    """scikit-learn gradient-boosted trees (depth 3) on the same features."""

    reg: object
    clf: object | None
    constant_starving: bool | None
    kind: str = "trees"

    @staticmethod
    def fit(X: np.ndarray, y_tput: np.ndarray, y_starve: np.ndarray,
            seed: int = 0) -> "TreeSurrogate":
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
        reg = GradientBoostingRegressor(max_depth=3, n_estimators=150, learning_rate=0.1,
                                        subsample=0.8, random_state=seed)
        reg.fit(X, np.log1p(y_tput))
        if len(set(y_starve.tolist())) < 2:  # one class only: nothing to learn
            return TreeSurrogate(reg, None, bool(y_starve[0]))
        clf = GradientBoostingClassifier(max_depth=3, n_estimators=150, learning_rate=0.1,
                                         subsample=0.8, random_state=seed)
        clf.fit(X, y_starve.astype(int))
        return TreeSurrogate(reg, clf, None)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.atleast_2d(X)
        tput = np.expm1(self.reg.predict(X))
        if self.clf is None:
            return tput, np.full(len(X), self.constant_starving)
        return tput, self.clf.predict(X).astype(bool)

    def explain(self) -> dict:
        imp = {"log_throughput": dict(zip(FEATURES, self.reg.feature_importances_.round(4).tolist()))}
        if self.clf is not None:
            imp["starving"] = dict(zip(FEATURES, self.clf.feature_importances_.round(4).tolist()))
        return imp


Surrogate = LinearSurrogate | TreeSurrogate


def sklearn_available() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def fit(samples: Sequence[Sample], kind: str = "auto", seed: int = 0) -> Surrogate:
    if not samples:
        raise ValueError("no training samples")
    X = np.vstack([s.x for s in samples])
    y_t = np.array([s.throughput for s in samples], dtype=float)
    y_s = np.array([s.starving for s in samples], dtype=bool)
    if kind == "auto":
        kind = "trees" if sklearn_available() else "linear"
    if kind == "trees":
        return TreeSurrogate.fit(X, y_t, y_s, seed=seed)
    if kind == "linear":
        return LinearSurrogate.fit(X, y_t, y_s)
    raise ValueError(f"unknown surrogate kind {kind!r} (auto, trees, linear)")


@dataclass(frozen=True)
class HoldoutScore:
    throughput_smape: float        # %, 0–200
    starvation_accuracy: float     # fraction of verdicts right
    answer_ms: float               # mean time of one prediction call over the held-out set
    n: int

    def to_dict(self) -> dict:
        return {"throughput_smape_pct": self.throughput_smape,
                "starvation_accuracy": self.starvation_accuracy,
                "answer_ms_per_call": self.answer_ms, "held_out_runs": self.n}


def score(model: Surrogate, samples: Sequence[Sample]) -> HoldoutScore:
    X = np.vstack([s.x for s in samples])
    t0 = time.perf_counter()
    tput, starving = model.predict(X)
    elapsed = time.perf_counter() - t0
    truth_t = np.array([s.throughput for s in samples])
    truth_s = np.array([s.starving for s in samples])
    return HoldoutScore(smape(tput, truth_t), float(np.mean(starving == truth_s)),
                        1000.0 * elapsed, len(samples))


def split(samples: Sequence[Sample], holdout: float, seed: int,
          group_key: str | None = "workload") -> tuple[list[Sample], list[Sample]]:
    """Train/held-out split; by `meta[group_key]` when given, so a held-out workload is unseen."""
    rng = np.random.default_rng(seed)
    if group_key and all(group_key in s.meta for s in samples):
        groups = sorted({s.meta[group_key] for s in samples})
        rng.shuffle(groups)
        held = set(groups[:max(1, round(holdout * len(groups)))])
        return ([s for s in samples if s.meta[group_key] not in held],
                [s for s in samples if s.meta[group_key] in held])
    idx = rng.permutation(len(samples))
    k = max(1, round(holdout * len(samples)))
    return [samples[i] for i in idx[k:]], [samples[i] for i in idx[:k]]


def best_slots(model: Surrogate, load: ReplicaLoad, slot_choices: Sequence[int],
               kv_capacity_tokens: Sequence[float]) -> tuple[int | None, float, bool]:
    """(max_loras, predicted throughput, predicted starving) maximising predicted throughput
    among slot choices predicted not to starve; (None, 0, True) when all are predicted to."""
    if not slot_choices:
        return None, 0.0, True
    X = features_many(load, slot_choices, kv_capacity_tokens)
    tput, starving = model.predict(X)
    ok = ~starving
    if not ok.any():
        return None, 0.0, True
    i = int(np.argmax(np.where(ok, tput, -np.inf)))
    return int(slot_choices[i]), float(tput[i]), False


def save_json(model: LinearSurrogate, path: str) -> None:
    """Linear models are plain numbers; save them readable (trees stay in memory)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"kind": "linear", "features": FEATURES, "mean": model.mean.tolist(),
                   "scale": model.scale.tolist(), "w_tput": model.w_tput.tolist(),
                   "w_starve": model.w_starve.tolist()}, f, indent=1)
