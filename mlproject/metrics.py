"""Classification metrics of probabilities of "up", and their confidence intervals.

Every model and baseline is scored by the same function on the same rows, so their numbers can
be put side by side. Losses are the lifecycle's (`pipelines.lifecycle.scores`, one clip), and so
are the intervals: Wilson's for accuracy, the paired interval's Newey-West t-interval of the mean
per-row loss for log loss. ROC AUC ranks pairs of rows and has no per-row form, so it is
reported as a point estimate only.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.lifecycle.intervals import LEVEL, paired_interval
from pipelines.lifecycle.scores import brier_losses, log_losses, wilson_interval

METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "brier")
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier"})
# The metrics `metric_intervals` gives an interval for.
INTERVAL_METRICS: tuple[str, ...] = ("accuracy", "log_loss")


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
        "log_loss": float(np.mean(log_losses(p, y))),
        "brier": float(np.mean(brier_losses(p, y))),
    }


def metric_intervals(
    *, y_true: np.ndarray, proba: np.ndarray, pred: np.ndarray | None = None, level: float = LEVEL
) -> dict[str, tuple[float, float]]:
    """Intervals at `level` of the metrics of `INTERVAL_METRICS` on rows in time order.

    Accuracy: Wilson's score interval of the share of hits. Log loss: the Newey-West t-interval
    of the mean of the per-row losses (`paired_interval` of the losses themselves), so that
    dependence between neighbouring candles widens it.
    """
    y = _labels(y_true)
    p = np.asarray(proba, dtype=np.float64).ravel()
    hard = (p >= 0.5).astype(np.int8) if pred is None else _labels(pred)
    if not y.size == p.size == hard.size:
        raise ValueError(f"{p.size} probabilities and {hard.size} predictions for {y.size} labels")
    if y.size == 0:
        raise ValueError("cannot score an empty set of rows")
    loss = paired_interval(log_losses(p, y), level=level)
    return {
        "accuracy": wilson_interval(int(np.sum(hard == y)), int(y.size), level=level),
        "log_loss": (loss.low, loss.high),
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
