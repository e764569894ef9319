"""Drift: has a served version become worse than knowing nothing, on the candles it predicted?

One sequential test per version, on one fixed baseline, over the version's realised rows in
candle order (from the live scorer, `pipelines.lifecycle.live.LiveFigures.differences`):

- The baseline is `base_rate` (the rate of "up" among the outcomes of the last month before each
  candle). It is scored on every realised row of every version, old ones included (the shipped
  logistic exists only for versions that carry one, and only on rows where it was recorded),
  and it knows nothing but the recent rate: a version significantly worse than it has stopped
  knowing anything. A trained baseline would alarm when the *baseline* got better, which is
  no reason to retrain the version.
- Each row's difference d = log loss of the version - log loss of the baseline is standardised
  by the standard deviation of the differences before it (causal, so a row's contribution never
  changes once made), clipped at +-`CLIP`, after `warmup` rows that only estimate the scale.
- A one-sided CUSUM accumulates the evidence that the version is worse:
  S_t = max(0, S_{t-1} + z_t - k); it alarms when S_t > h and then starts again from 0, so a
  later alarm rests on rows after the earlier one. k (`reference`) is half the standardised
  shift it is tuned to, h (`threshold`) sets the false-alarm rate.

Recomputing the test on the grown series gives the same path and the same alarms as running it
row by row, so checking every minute is not testing again: there is no window re-tested with a
fresh interval. The false-alarm rate under the null (version and baseline equally good) and the
detection delays are measured by `python -m bench.drift_alarms` on resampled real per-row
differences (the table is in docs/service.md, "Drift"); the defaults keep false alarms well
under one per 10,000 hourly rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.lifecycle.baselines import BASE_RATE

BASELINE = BASE_RATE  # the one baseline drift compares with (see the module docstring)
REFERENCE = 0.05  # k, in standard deviations of the per-row difference
THRESHOLD = 60.0  # h, in standard deviations
WARMUP = 168  # rows that only estimate the scale (a week of hourly candles)
CLIP = 4.0  # a standardised difference counts at most this much


@dataclass(frozen=True)
class DriftRule:
    """The test's constants (settings `ML_DRIFT_REFERENCE`, `ML_DRIFT_THRESHOLD`,
    `ML_DRIFT_WARMUP`)."""

    reference: float = REFERENCE
    threshold: float = THRESHOLD
    warmup: int = WARMUP
    clip: float = CLIP

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reference) and self.reference >= 0):
            raise ValueError(f"reference must be a finite number >= 0, got {self.reference!r}")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0, got {self.threshold!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 2:
            raise ValueError(f"warmup must be an integer of at least 2, got {self.warmup!r}")
        if not self.clip > 0:
            raise ValueError(f"clip must be positive, got {self.clip!r}")


@dataclass(frozen=True)
class DriftState:
    """Where the test stands after `rows` rows."""

    rows: int
    statistic: float  # S after the newest row (0 during the warm-up)
    alarms: tuple[int, ...]  # row positions (0-based) at which S crossed the threshold
    rule: DriftRule
    mean: float  # mean per-row difference, version - baseline (NaN for no rows)

    @property
    def warming_up(self) -> bool:
        return self.rows <= self.rule.warmup

    @property
    def drifting(self) -> bool:
        """The test has alarmed on this version's rows."""
        return bool(self.alarms)

    @property
    def last_alarm(self) -> int | None:
        return self.alarms[-1] if self.alarms else None


def standardised(differences: np.ndarray, *, warmup: int, clip: float = CLIP) -> np.ndarray:
    """z_t = d_t / (sd of d_0..d_{t-1}), clipped at +-`clip`, along axis 0; 0 for the first
    `warmup` rows (and wherever the scale is 0)."""
    d = np.asarray(differences, dtype=np.float64)
    n = d.shape[0]
    z = np.zeros_like(d)
    if n <= warmup:
        return z
    count = np.arange(1, n + 1, dtype=np.float64).reshape((n,) + (1,) * (d.ndim - 1))
    mean = np.cumsum(d, axis=0) / count
    square = np.cumsum(d * d, axis=0) / count
    sd = np.sqrt(np.maximum(square - mean * mean, 0.0))  # of rows 0..t
    before = sd[warmup - 1 : n - 1]  # the scale of the rows before each of warmup..n-1
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(before > 0, d[warmup:] / before, 0.0)
    z[warmup:] = np.clip(scaled, -clip, clip)
    return z


def cusum(z: np.ndarray, *, reference: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The one-sided CUSUM of standardised rows `z` along axis 0 (each column of a 2-D `z` an
    independent series): the statistic after each row, and where it crossed `threshold` (a
    boolean mask; it restarts from 0 after each alarm)."""
    values = np.asarray(z, dtype=np.float64)
    path = np.zeros_like(values)
    alarm = np.zeros(values.shape, dtype=bool)
    s = np.zeros(values.shape[1:])
    for t in range(values.shape[0]):
        s = np.maximum(0.0, s + values[t] - reference)
        hit = s > threshold
        alarm[t] = hit
        s = np.where(hit, 0.0, s)
        path[t] = s
    return path, alarm


def drift_state(differences: np.ndarray, rule: DriftRule | None = None) -> DriftState:
    """The test on a version's per-row differences (version - baseline), in candle order."""
    rule = rule or DriftRule()
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    if not np.isfinite(d).all():
        raise ValueError("differences must be finite")
    z = standardised(d, warmup=rule.warmup, clip=rule.clip)
    path, alarm = cusum(z, reference=rule.reference, threshold=rule.threshold)
    return DriftState(
        rows=int(d.size),
        statistic=float(path[-1]) if d.size else 0.0,
        alarms=tuple(int(t) for t in np.flatnonzero(alarm)),
        rule=rule,
        mean=float(d.mean()) if d.size else math.nan,
    )
