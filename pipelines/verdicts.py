"""The one paired test of the project: is one forecaster's loss below another's on the same rows?

Two forecasters scored on the same candles are compared through the per-row difference of their
losses (first minus second), in time order. Neighbouring rows of a candle series are dependent
(a volatile day makes every model miss together), so the mean difference is resampled with a
moving-block bootstrap: blocks of `block` consecutive rows (a day of hourly candles by default)
keep that short-range dependence, where an i.i.d. bootstrap would report an interval too narrow
and call noise a win. The verdict is the percentile interval of the resampled means: only an
interval wholly below zero (or below `-margin`) says the first forecaster is better.

Also here: `log_losses`, the per-row log loss such comparisons are made of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Probabilities are clipped this far from 0 and 1, so one confident miss costs ~16 nats, not inf.
LOG_LOSS_EPS = 1e-7


@dataclass(frozen=True)
class PairedVerdict:
    """The mean per-row difference (first - second) and its bootstrap interval."""

    mean: float
    low: float
    high: float
    rows: int
    block: int  # the block length used (shrunk for short series)
    resamples: int
    level: float

    def better(self, margin: float = 0.0) -> bool:
        """The whole interval lies below `-margin`: the first is significantly better."""
        return self.high < -margin

    def worse(self, margin: float = 0.0) -> bool:
        """The whole interval lies above `+margin`: the first is significantly worse."""
        return self.low > margin

    def to_dict(self) -> dict[str, float | int]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "rows": self.rows,
            "block": self.block,
        }


def paired_block_bootstrap(
    differences: np.ndarray,
    *,
    block: int = 24,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedVerdict:
    """Moving-block bootstrap of the mean of `differences` (per-row, same rows, time order).

    Each resample draws ceil(n / block) blocks with random starts in [0, n - block],
    concatenates them, truncates to n rows and takes the mean; the interval is the percentile
    interval of those means at `level`. A series shorter than 2 * block uses blocks of
    max(1, n // 2) rows.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"differences must be one-dimensional, got shape {d.shape}")
    n = int(d.size)
    if n == 0:
        raise ValueError("differences has 0 rows: the paired bootstrap needs at least 1")
    if not np.isfinite(d).all():
        bad = int(np.flatnonzero(~np.isfinite(d))[0])
        raise ValueError(f"differences must be finite: row {bad} is {d[bad].item()!r}")
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 1:
        raise ValueError(f"block must be an integer of at least 1, got {block!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int | np.integer) or resamples < 1:
        raise ValueError(f"resamples must be an integer of at least 1, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    block = int(block)
    resamples = int(resamples)
    if n < 2 * block:
        block = max(1, n // 2)

    blocks = math.ceil(n / block)
    tail = n - (blocks - 1) * block  # rows kept of the last block after truncation to n
    cumulative = np.concatenate(([0.0], np.cumsum(d)))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(resamples, blocks))
    full = cumulative[starts[:, :-1] + block] - cumulative[starts[:, :-1]]
    last = cumulative[starts[:, -1] + tail] - cumulative[starts[:, -1]]
    means = (full.sum(axis=1) + last) / n

    alpha = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [alpha, 100.0 - alpha])
    return PairedVerdict(
        mean=float(d.mean()),
        low=float(low),
        high=float(high),
        rows=n,
        block=block,
        resamples=resamples,
        level=float(level),
    )


def log_losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row binary log loss (nats) of probabilities of "up" `p` against 0/1 outcomes `y`.

    `p` is clipped to [1e-7, 1 - 1e-7] first.
    """
    prob = np.asarray(p, dtype=np.float64)
    labels = np.asarray(y)
    if prob.shape != labels.shape or prob.ndim != 1:
        raise ValueError(
            f"p and y must be one-dimensional and of one length, got shapes {prob.shape} "
            f"and {labels.shape}"
        )
    if not np.isfinite(prob).all() or ((prob < 0) | (prob > 1)).any():
        bad = int(np.flatnonzero(~(np.isfinite(prob) & (prob >= 0) & (prob <= 1)))[0])
        raise ValueError(f"p must be probabilities in [0, 1]: row {bad} is {prob[bad].item()!r}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(labels, (0, 1)))[0])
        raise ValueError(f"y must be 0 or 1: row {bad} is {labels[bad].item()!r}")
    q = np.clip(prob, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    up = labels.astype(np.float64)
    return -(up * np.log(q) + (1.0 - up) * np.log1p(-q))
