"""The one paired interval: is one forecaster's loss below another's on the same rows?

Two forecasters scored on the same candles are compared through the per-row difference of their
losses (first minus second), in time order. The interval of the mean difference is a Student-t
interval whose standard error is Newey and West's (HAC): the sample autocovariances up to lag
L = floor(4 (n / 100)^(2/9)) with Bartlett weights, so short-range dependence between
neighbouring candles widens it as it should, with n - 1 degrees of freedom.

Why this one: resampling real per-row log-loss differences of the bundled pairs under a zero-mean
null (`python -m bench.verdict_coverage`, table in docs/evaluation.md), its 95 % interval covers
94-96 % of the time at every size the lifecycle uses (100, 168, 500, 2,000, 12,000 rows), where
the moving-block bootstrap with day-long blocks covered 83 % at 100 rows and 88 % at 168. The
differences are nearly uncorrelated (lag-1 autocorrelation within +-0.05), so long blocks cost
coverage and buy nothing; and the interval needs no resampling, so the live chores and offline
replays compute it in microseconds and identically every time.

Also here: `rows_per_day`, the one rule that turns a timeframe into "a day of rows".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
METHOD = "newey-west"
POWER = 0.8  # the power at which `detectable_edge` is stated


@dataclass(frozen=True)
class PairedVerdict:
    """The mean per-row difference (first - second), its interval and what it rests on."""

    mean: float
    low: float
    high: float
    rows: int
    lag: int  # the Newey-West lag (bandwidth) used
    se: float  # the HAC standard error of the mean
    level: float = LEVEL

    def better(self, margin: float = 0.0) -> bool:
        """The whole interval lies below `-margin`: the first is significantly better."""
        return self.high < -margin

    def worse(self, margin: float = 0.0) -> bool:
        """The whole interval lies above `+margin`: the first is significantly worse."""
        return self.low > margin

    @property
    def state(self) -> str:
        """better, worse or undecided (against a margin of 0)."""
        if self.better():
            return "better"
        return "worse" if self.worse() else "undecided"

    def detectable_edge(self, power: float = POWER) -> float:
        """The smallest true mean difference these rows detect with `power` (in the loss's
        units): (z of the level + z of the power) times the standard error."""
        return detectable_edge(self.se, level=self.level, power=power)

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "rows": self.rows,
            "lag": self.lag,
            "se": self.se,
            "level": self.level,
            "method": METHOD,
        }

    def words(self) -> str:
        """ "+0.0012, 95 % interval [-0.0030, +0.0054] (Newey-West, n rows)"."""
        return (
            f"{self.mean:+.4f}, {self.level * 100:g} % interval [{self.low:+.4f}, "
            f"{self.high:+.4f}] ({METHOD} t-interval, {self.rows} rows, lag {self.lag})"
        )


def newey_west_lag(rows: int) -> int:
    """Newey and West's (1994) bandwidth rule: floor(4 (n / 100)^(2/9)), at most n - 1."""
    if rows < 2:
        return 0
    return max(0, min(rows - 1, math.floor(4.0 * (rows / 100.0) ** (2.0 / 9.0))))


def paired_interval(differences: np.ndarray, *, level: float = LEVEL) -> PairedVerdict:
    """The HAC t-interval of the mean of `differences` (per row, same rows, time order).

    One row gives an interval of infinite width (nothing can be told from it).
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"differences must be one-dimensional, got shape {d.shape}")
    n = int(d.size)
    if n == 0:
        raise ValueError("differences has 0 rows: the paired interval needs at least 1")
    if not np.isfinite(d).all():
        bad = int(np.flatnonzero(~np.isfinite(d))[0])
        raise ValueError(f"differences must be finite: row {bad} is {d[bad].item()!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    mean = float(d.mean())
    lag = newey_west_lag(n)
    if n < 2:
        return PairedVerdict(mean, -math.inf, math.inf, n, lag, math.inf, float(level))
    e = d - mean
    variance = float(e @ e) / n
    for k in range(1, lag + 1):
        variance += 2.0 * (1.0 - k / (lag + 1.0)) * float(e[k:] @ e[:-k]) / n
    # Bartlett weights keep it non-negative; the floor guards rounding. n - 1: the t scale.
    se = math.sqrt(max(variance, 0.0) / (n - 1))
    half = _t_quantile(0.5 + level / 2.0, n - 1) * se
    return PairedVerdict(mean, mean - half, mean + half, n, lag, se, float(level))


def detectable_edge(se: float, *, level: float = LEVEL, power: float = POWER) -> float:
    """The true mean difference an interval of standard error `se` excludes 0 for with
    probability `power` (normal approximation)."""
    normal = NormalDist()
    return (normal.inv_cdf(0.5 + level / 2.0) + normal.inv_cdf(power)) * se


def rows_per_day(timeframe: str) -> int:
    """Candles in a day of `timeframe` (at least 1)."""
    from pipelines.candles.timeframes import timeframe_delta

    return max(1, round(86_400 / timeframe_delta(timeframe).total_seconds()))


@lru_cache(maxsize=4096)
def _t_quantile(q: float, df: int) -> float:
    from scipy.special import stdtrit  # type: ignore[import-untyped]

    return float(stdtrit(df, q))
