"""Classification metrics of probabilities of "up", and their confidence intervals.

Every model and baseline is scored by the same function on the same rows, so their numbers can
be put side by side. Probabilities are clipped away from 0 and 1 before the log loss, as
scikit-learn does, so one confident miss costs a lot but never infinity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "brier")
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier"})
_EPS = 1e-15


def classification_metrics(
    *, y_true: np.ndarray, proba: np.ndarray, pred: np.ndarray | None = None
) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC, log loss and Brier score.

    Args:
        y_true: 0/1 labels.
        proba: probability of label 1, same length.
        pred: hard 0/1 predictions; `proba >= 0.5` when None.

    Returns:
        A dict keyed by `METRICS`; ROC AUC is NaN when `y_true` holds one class only.
    """
    y = _labels(y_true)
    p = np.asarray(proba, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities for {y.size} labels")
    if y.size == 0:
        raise ValueError("cannot score an empty set of rows")
    hard = (p >= 0.5).astype(np.int8) if pred is None else _labels(pred)
    if hard.shape != y.shape:
        raise ValueError(f"{hard.size} predictions for {y.size} labels")
    return {
        "accuracy": float(np.mean(hard == y)),
        "balanced_accuracy": balanced_accuracy(y, hard),
        "roc_auc": roc_auc(y, p),
        "log_loss": log_loss(y, p),
        "brier": float(np.mean((p - y) ** 2)),
    }


def is_better(metric: str, candidate: float, reference: float, *, margin: float = 0.0) -> bool:
    """Whether `candidate` is at least `margin` better than `reference` on `metric`."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: allowed metrics are {', '.join(METRICS)}")
    if math.isnan(candidate) or math.isnan(reference):
        return False
    if metric in LOWER_IS_BETTER:
        return candidate <= reference - margin
    return candidate >= reference + margin


def best_of(metric: str, scores: dict[str, float]) -> str:
    """The key of the best score (lowest for losses, highest otherwise); NaN never wins."""
    finite = {k: v for k, v in scores.items() if not math.isnan(v)}
    if not finite:
        return next(iter(scores))
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(finite, key=lambda k: finite[k])


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall of the classes present in `y` (no warning when one is absent)."""
    recalls = [float(np.mean(pred[y == c] == c)) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(recalls))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    positives = int(y.sum())
    negatives = int(y.size - positives)
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _average_ranks(p)
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy in nats."""
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def wilson_interval(successes: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % for the default z)."""
    if n <= 0:
        return (math.nan, math.nan)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def block_bootstrap_interval(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    *,
    y_true: np.ndarray,
    proba: np.ndarray,
    block: int = 24,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of `statistic(y, p)` under a circular moving-block bootstrap.

    Blocks of consecutive rows (a day of hourly candles by default) keep the short-range
    dependence of a time series that an i.i.d. bootstrap would pretend away.
    """
    y = _labels(y_true)
    p = np.asarray(proba, dtype=np.float64).ravel()
    n = y.size
    if n == 0:
        return (math.nan, math.nan)
    block = max(1, min(block, n))
    rng = np.random.default_rng(seed)
    blocks = math.ceil(n / block)
    offsets = np.arange(block)
    values = np.empty(resamples)
    for i in range(resamples):
        starts = rng.integers(0, n, size=blocks)
        idx = ((starts[:, None] + offsets[None, :]) % n).ravel()[:n]
        values[i] = statistic(y[idx], p[idx])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def _labels(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values).ravel()
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("labels and predictions must be 0 or 1")
    return arr.astype(np.int8)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts + 1) / 2.0)[inverse]
