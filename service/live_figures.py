"""Live figures of a version: accuracy and log loss on its realised candles, with intervals,
beside the naive baselines scored on exactly those candles.

A live accuracy alone says little: 56 % over 40 candles is compatible with a coin, and on a
rising market "always up" scores as well. So each version's figures come with

- `accuracy` and its 95 % Wilson score interval (right near 0 and 1 and for few rows, where
  the normal approximation is not);
- the mean log loss and its 95 % moving-block bootstrap interval (blocks of 24 rows, in candle
  order: neighbouring hourly candles are dependent, see `pipelines.verdicts`);
- the naive baselines of the drift check (`service.drift.naive_probabilities`: `coin`,
  `base_rate`, `last_move`), each scored on the same candles, accuracy and log loss;
- the paired verdict against the best of them (lowest log loss on these rows): the interval
  of the mean per-row log-loss difference, version minus baseline.

Every figure counts each candle once per version (`PredictionHistory.realised_rows`), and only
candles of the store: the history never holds a prediction from candles a client posted, and a
realised row whose candle the store no longer holds is left out of all of them, since the
baselines could not be scored on it. A direction is "up" when p >= 0.5, the service's rule
(`pipelines.signals.describe_probability`), for the baselines as for the version.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.verdicts import PairedVerdict, log_losses, paired_block_bootstrap
from service.drift import NAIVE_BASELINES, naive_probabilities
from service.history.store import RealisedRows

logger = logging.getLogger(__name__)

LEVEL = 0.95
BLOCK = 24  # a day of hourly candles, as the gate's and the drift check's bootstrap


def wilson_interval(successes: int, trials: int, *, level: float = LEVEL) -> tuple[float, float]:
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


@dataclass(frozen=True)
class Estimate:
    """A mean and its interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class BaselineScore:
    """A naive baseline on the version's candles."""

    accuracy: float
    log_loss: float


@dataclass(frozen=True)
class LiveFigures:
    """One version's live figures; see the module docstring."""

    model_type: str
    model_version: str
    candle_times: tuple[int, ...]  # the candles scored (epoch ms), oldest first
    correct: int
    accuracy_interval: tuple[float, float]
    log_loss: Estimate
    baselines: dict[str, BaselineScore]
    best_baseline: str
    versus_baseline: PairedVerdict  # of version loss - best baseline loss, per row
    level: float
    block: int  # the bootstrap's block length (shrunk for a short series)

    @property
    def predictions(self) -> int:
        return len(self.candle_times)

    @property
    def accuracy(self) -> float:
        return self.correct / self.predictions

    @property
    def verdict(self) -> Literal["better", "worse", "undecided"]:
        """Is the version's log loss significantly below (above) the best baseline's?"""
        if self.versus_baseline.better():
            return "better"
        if self.versus_baseline.worse():
            return "worse"
        return "undecided"

    def to_json(self) -> dict[str, Any]:
        """The `liveAccuracy` entry of the version in `/api/models/{pair}/status`: the
        original three fields first, then the new ones."""
        low, high = self.accuracy_interval
        verdict = self.versus_baseline
        return {
            "predictions": self.predictions,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "interval": {"low": low, "high": high, "level": self.level, "method": "wilson"},
            "logLoss": {
                "value": self.log_loss.value,
                "low": self.log_loss.low,
                "high": self.log_loss.high,
                "level": self.level,
                "block": self.block,
                "method": "block-bootstrap",
            },
            "baselines": {
                name: {"accuracy": score.accuracy, "logLoss": score.log_loss}
                for name, score in self.baselines.items()
            },
            "versusBaseline": {
                "baseline": self.best_baseline,
                "mean": verdict.mean,
                "low": verdict.low,
                "high": verdict.high,
                "rows": verdict.rows,
                "block": verdict.block,
                "verdict": self.verdict,
            },
            "firstCandle": self.candle_times[0],
            "lastCandle": self.candle_times[-1],
        }


def score(
    rows: RealisedRows, candles: pd.DataFrame, *, level: float = LEVEL, block: int = BLOCK
) -> LiveFigures | None:
    """The figures of `rows` (one version) on those of its candles that `candles` (the store's
    frame, oldest first) holds; None when it holds none of them."""
    stamps = pd.DatetimeIndex(candles.index).as_unit("ms").asi8
    known = np.isin(rows.candle_time, stamps)
    if not known.all():
        logger.debug(
            "live figures %s v%s: %d realised candle(s) not in the store, left out",
            rows.model_type,
            rows.model_version,
            int((~known).sum()),
        )
    if not known.any():
        return None
    times = rows.candle_time[known]
    outcome = rows.outcome[known]
    horizons = rows.horizon[known]

    naive = {name: np.empty(times.size) for name in NAIVE_BASELINES}
    for horizon in np.unique(horizons).tolist():
        same = horizons == horizon
        for name, p in naive_probabilities(candles, times[same], horizon=int(horizon)).items():
            naive[name][same] = p

    losses = log_losses(rows.probability[known], outcome)
    baseline_losses = {name: log_losses(naive[name], outcome) for name in NAIVE_BASELINES}
    baselines = {
        name: BaselineScore(
            accuracy=float(np.mean((naive[name] >= 0.5) == (outcome == 1))),
            log_loss=float(np.mean(baseline_losses[name])),
        )
        for name in NAIVE_BASELINES
    }
    best = min(NAIVE_BASELINES, key=lambda name: baselines[name].log_loss)
    spread = paired_block_bootstrap(losses, block=block, level=level)
    correct = int(rows.correct[known].sum())
    return LiveFigures(
        model_type=rows.model_type,
        model_version=rows.model_version,
        candle_times=tuple(int(t) for t in times),
        correct=correct,
        accuracy_interval=wilson_interval(correct, int(times.size), level=level),
        log_loss=Estimate(value=spread.mean, low=spread.low, high=spread.high),
        baselines=baselines,
        best_baseline=best,
        versus_baseline=paired_block_bootstrap(
            losses - baseline_losses[best], block=block, level=level
        ),
        level=float(level),
        block=spread.block,
    )


def live_figures(
    realised: list[RealisedRows], store: CandleStore, *, pair: str, timeframe: str
) -> list[LiveFigures]:
    """The figures of every version of `pair` with a realised outcome on a store candle, by
    model type and version, from `PredictionHistory.realised_rows(pair=pair)`."""
    if not realised:
        return []
    try:
        candles = store.load(pair, timeframe)
    except CandlesNotFoundError:
        logger.warning("live figures of %s: the store has no %s candles of it", pair, timeframe)
        return []
    found = (score(rows, candles) for rows in realised)
    return [figures for figures in found if figures is not None]
