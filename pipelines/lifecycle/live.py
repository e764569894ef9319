"""The live scorer: a version's realised predictions against baselines on the same candles.

A live accuracy alone says little: 56 % over 40 candles is compatible with a coin, and on a
rising market "always up" scores as well. So the figures of a version's realised rows are

- `accuracy` and its Wilson score interval (`scores.wilson_interval`);
- the mean log loss and its interval (`intervals.paired_interval` of the per-row losses);
- each baseline scored on the same candles: the naive ones (`baselines.naive_probabilities`:
  `coin`, `base_rate`, `last_move`) on every row, and the version's own shipped logistic
  baseline (`logistic`) on the rows where its shadow probability was recorded;
- the version against each baseline: the paired interval of the per-row log-loss difference,
  version minus baseline, in candle order; `versus_baseline` is the one against the naive
  baseline of lowest log loss on these rows.

Ties (an unchanged close, `scores.outcome`) are neither up nor down: they are counted (`ties`)
and left out of every score, accuracy included. Only candles of the store are scored (a
realised row whose candle the store no longer holds is left out: the baselines could not be
scored on it). A direction is "up" when p >= 0.5, for the baselines as for the version. The
drift test reads its per-row differences from these figures (`differences`), so "the version
against the baselines on realised candles" is computed once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.lifecycle.baselines import LOGISTIC, NAIVE_BASELINES, naive_probabilities
from pipelines.lifecycle.intervals import LEVEL, METHOD, PairedVerdict, paired_interval
from pipelines.lifecycle.scores import log_losses, wilson_interval

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RealisedRows:
    """One version's predictions whose outcome is up or down: one row per candle, in candle
    order, as the prediction history reads them.

    Parallel arrays: candle open time (epoch ms), probability of "up", outcome (1 up, 0 down),
    whether the stated direction was right, the horizon the prediction was made for, and the
    shipped logistic baseline's probability recorded beside it (NaN where none was). `ties`
    counts the version's realised candles whose close was unchanged (no row here).
    """

    model_type: str
    model_version: str
    candle_time: np.ndarray
    probability: np.ndarray
    outcome: np.ndarray
    correct: np.ndarray
    horizon: np.ndarray
    baseline_probability: np.ndarray | None = None
    ties: int = 0

    def logistic(self) -> np.ndarray:
        """The shipped logistic baseline's probabilities (NaN where not recorded)."""
        if self.baseline_probability is None:
            return np.full(self.candle_time.size, np.nan)
        return np.asarray(self.baseline_probability, dtype=np.float64)


@dataclass(frozen=True)
class Estimate:
    """A mean and its interval."""

    value: float
    low: float
    high: float
    lag: int  # the Newey-West lag of the interval


@dataclass(frozen=True)
class BaselineScore:
    """A baseline on (some of) the version's candles, and the version against it there."""

    accuracy: float
    log_loss: float
    versus: PairedVerdict  # version loss - baseline loss, per row, on the baseline's rows

    @property
    def rows(self) -> int:
        return self.versus.rows


@dataclass(frozen=True)
class LiveFigures:
    """One version's live figures; see the module docstring."""

    model_type: str
    model_version: str
    candle_times: tuple[int, ...]  # the candles scored (epoch ms), oldest first
    correct: int
    ties: int
    accuracy_interval: tuple[float, float]
    log_loss: Estimate
    baselines: dict[str, BaselineScore]
    best_baseline: str  # the naive baseline of lowest log loss on these rows
    level: float
    # Per row, in candle order: the version's log loss and each baseline's (NaN where the
    # baseline was not scored).
    losses: np.ndarray = field(repr=False, compare=False)
    baseline_losses: dict[str, np.ndarray] = field(repr=False, compare=False)

    @property
    def predictions(self) -> int:
        return len(self.candle_times)

    @property
    def accuracy(self) -> float:
        return self.correct / self.predictions

    @property
    def versus_baseline(self) -> PairedVerdict:
        """The version against the best naive baseline."""
        return self.baselines[self.best_baseline].versus

    @property
    def verdict(self) -> Literal["better", "worse", "undecided"]:
        """Is the version's log loss significantly below (above) the best naive baseline's?"""
        state = self.versus_baseline.state
        return "better" if state == "better" else "worse" if state == "worse" else "undecided"

    def differences(self, baseline: str) -> tuple[np.ndarray, np.ndarray]:
        """(candle times, per-row log loss of the version minus `baseline`'s) on the rows the
        baseline was scored on, in candle order."""
        other = self.baseline_losses[baseline]
        scored = np.isfinite(other)
        times = np.asarray(self.candle_times, dtype=np.int64)[scored]
        return times, self.losses[scored] - other[scored]

    def to_json(self) -> dict[str, Any]:
        """The `liveAccuracy` entry of the version in `/api/models/{pair}/status`: the
        original three fields first, then the new ones."""
        low, high = self.accuracy_interval
        best = self.versus_baseline
        return {
            "predictions": self.predictions,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "ties": self.ties,
            "interval": {"low": low, "high": high, "level": self.level, "method": "wilson"},
            "logLoss": {
                "value": self.log_loss.value,
                "low": self.log_loss.low,
                "high": self.log_loss.high,
                "level": self.level,
                "lag": self.log_loss.lag,
                "method": METHOD,
            },
            "baselines": {
                name: {
                    "accuracy": score.accuracy,
                    "logLoss": score.log_loss,
                    "rows": score.rows,
                    "versus": _versus(score.versus),
                }
                for name, score in self.baselines.items()
            },
            "versusBaseline": {"baseline": self.best_baseline, **_versus(best)},
            "firstCandle": self.candle_times[0],
            "lastCandle": self.candle_times[-1],
        }


def _versus(verdict: PairedVerdict) -> dict[str, Any]:
    return {
        "mean": verdict.mean,
        "low": verdict.low,
        "high": verdict.high,
        "rows": verdict.rows,
        "lag": verdict.lag,
        "method": METHOD,
        "verdict": verdict.state,
    }


def score(rows: RealisedRows, candles: pd.DataFrame, *, level: float = LEVEL) -> LiveFigures | None:
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
    times = np.asarray(rows.candle_time, dtype=np.int64)[known]
    outcome = np.asarray(rows.outcome)[known]
    horizons = np.asarray(rows.horizon)[known]

    probabilities = {name: np.empty(times.size) for name in NAIVE_BASELINES}
    for horizon in np.unique(horizons).tolist():
        same = horizons == horizon
        for name, p in naive_probabilities(candles, times[same], horizon=int(horizon)).items():
            probabilities[name][same] = p
    logistic = rows.logistic()[known]
    if np.isfinite(logistic).any():
        probabilities[LOGISTIC] = logistic

    losses = log_losses(np.asarray(rows.probability)[known], outcome)
    baselines: dict[str, BaselineScore] = {}
    baseline_losses: dict[str, np.ndarray] = {}
    for name, p in probabilities.items():
        scored = np.isfinite(p)
        per_row = np.full(times.size, np.nan)
        per_row[scored] = log_losses(p[scored], outcome[scored])
        baseline_losses[name] = per_row
        baselines[name] = BaselineScore(
            accuracy=float(np.mean((p[scored] >= 0.5) == (outcome[scored] == 1))),
            log_loss=float(np.mean(per_row[scored])),
            versus=paired_interval(losses[scored] - per_row[scored], level=level),
        )
    best = min(NAIVE_BASELINES, key=lambda name: baselines[name].log_loss)
    spread = paired_interval(losses, level=level)
    correct = int(np.asarray(rows.correct)[known].sum())
    return LiveFigures(
        model_type=rows.model_type,
        model_version=rows.model_version,
        candle_times=tuple(int(t) for t in times),
        correct=correct,
        ties=rows.ties,
        accuracy_interval=wilson_interval(correct, int(times.size), level=level),
        log_loss=Estimate(value=spread.mean, low=spread.low, high=spread.high, lag=spread.lag),
        baselines=baselines,
        best_baseline=best,
        level=float(level),
        losses=losses,
        baseline_losses=baseline_losses,
    )


def live_figures(
    realised: list[RealisedRows], store: CandleStore, *, pair: str, timeframe: str
) -> list[LiveFigures]:
    """The figures of every version of `pair` with a realised outcome on a store candle, in the
    order of `realised` (the history's realised rows of the pair, per model type and version)."""
    if not realised:
        return []
    try:
        candles = store.load(pair, timeframe)
    except CandlesNotFoundError:
        logger.warning("live figures of %s: the store has no %s candles of it", pair, timeframe)
        return []
    found = (score(rows, candles) for rows in realised)
    return [figures for figures in found if figures is not None]
