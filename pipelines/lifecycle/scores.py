"""Per-row scores of probabilities of "up", and the rule that makes an outcome up, down or a tie.

Every loss of the project is computed here: the training's metrics, the gate, the live figures,
drift and the challenger policy all score rows with `log_losses`, so one clip applies everywhere.

An outcome compares the close `horizon` candles ahead with the close now: higher is up (1),
lower is down (0), and an unchanged close is a tie (NaN): no trade profits from it, so a tie is
neither a label to learn nor a row to score. Scores take 0/1 outcomes only; `decided` drops ties.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

# Probabilities are clipped this far from 0 and 1, so one confident miss costs ~16 nats, not inf.
LOG_LOSS_EPS = 1e-7


def outcomes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """1.0 where `end` > `start` (up), 0.0 where lower (down), NaN for a tie or an unknown."""
    a = np.asarray(start, dtype=np.float64)
    b = np.asarray(end, dtype=np.float64)
    out = np.where(b > a, 1.0, 0.0)
    out[~((b > a) | (b < a))] = np.nan  # equal, or either side NaN
    return out


def outcome(start: float, end: float) -> int | None:
    """One outcome: 1 up, 0 down, None for a tie (an unchanged close)."""
    if end > start:
        return 1
    if end < start:
        return 0
    return None


def decided(y: np.ndarray) -> np.ndarray:
    """A boolean mask of the rows whose outcome is up or down (not a tie, not unknown)."""
    values = np.asarray(y, dtype=np.float64)
    return np.isfinite(values)


def _check(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        raise ValueError(
            f"y must be 0 or 1 (ties are dropped before scoring): row {bad} is "
            f"{labels[bad].item()!r}"
        )
    return prob, labels.astype(np.float64)


def log_losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row binary log loss (nats) of probabilities of "up" `p` against 0/1 outcomes `y`.

    `p` is clipped to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS] first.
    """
    prob, up = _check(p, y)
    q = np.clip(prob, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    return -(up * np.log(q) + (1.0 - up) * np.log1p(-q))


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean of `log_losses` (NaN for no rows)."""
    losses = log_losses(p, y)
    return float(losses.mean()) if losses.size else math.nan


def brier_losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row squared error of `p` against 0/1 outcomes `y`."""
    prob, up = _check(p, y)
    return (prob - up) ** 2


def wilson_interval(successes: int, trials: int, *, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion `successes / trials` at `level`."""
    for name, value in (("successes", successes), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials!r}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, trials={trials}], got {successes!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    n = float(trials)
    p = successes / n
    shrink = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / shrink
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / shrink
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high
