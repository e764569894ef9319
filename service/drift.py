"""Drift: is a production version's live log loss significantly worse than a naive baseline's?

A version passed its promotion gate on held-out rows; markets change, and a model can go on
serving after it has stopped knowing anything. The honest live check compares it, on the very
candles it predicted and whose outcome is now known, with forecasters that know nothing but
recent history:

- `coin`: always 0.5;
- `base_rate`: the rate of "up" among the outcomes realised within the last `lookback` candles;
- `last_move`: fitted persistence: over the same window, the rate at which a move's direction
  repeats the previous move's; p(up) is that rate after an up move and one minus it otherwise.

Each baseline uses only candles at or before the predicted-from candle (the outcome of candle j
counts at candle i only when j + horizon <= i), so it could have been served live, as the model
was. The best baseline (lowest mean log loss on these rows) is compared with the model through
the paired block bootstrap of per-row log-loss differences (`pipelines.verdicts`); the version
is drifting when the whole interval lies above `margin`, i.e. it is significantly worse than
knowing nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.candles.store import CandleStore
from pipelines.verdicts import PairedVerdict, log_losses, paired_block_bootstrap
from service.history.store import PredictionHistory

logger = logging.getLogger(__name__)

NAIVE_BASELINES: tuple[str, ...] = ("coin", "base_rate", "last_move")
DEFAULT_LOOKBACK = 720  # a month of hourly candles
MIN_OUTCOMES = 48  # fewer realised outcomes than this (or half the window) give no verdict
_CLIP = (0.01, 0.99)


def naive_probabilities(
    candles: pd.DataFrame,
    candle_times_ms: np.ndarray,
    *,
    horizon: int,
    lookback: int = DEFAULT_LOOKBACK,
) -> dict[str, np.ndarray]:
    """Probabilities of "up" (close `horizon` rows later above the close now) of each naive
    baseline, for each predicted-from candle in `candle_times_ms` (epoch ms, in the frame).

    Rows of `candles` are the store's rows, oldest first, as the history's outcomes count them.
    Only candles at or before each time are read; see the module docstring for the baselines.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon must be an integer of at least 1, got {horizon!r}")
    if isinstance(lookback, bool) or not isinstance(lookback, int | np.integer) or lookback < 1:
        raise ValueError(f"lookback must be an integer of at least 1, got {lookback!r}")
    index = pd.DatetimeIndex(candles.index)
    if not index.is_monotonic_increasing:
        raise ValueError("candles must be sorted oldest first, as CandleStore.load returns them")
    stamps = index.as_unit("ms").asi8
    close = candles["close"].to_numpy(dtype=np.float64)
    times = np.asarray(candle_times_ms, dtype=np.int64).ravel()
    n = close.size
    positions = np.searchsorted(stamps, times)
    found = positions < n
    found[found] = stamps[positions[found]] == times[found]
    if not found.all():
        first = int(times[~found][0])
        raise ValueError(
            f"{int((~found).sum())} candle time(s) are not in the candles, first {first} "
            f"({pd.Timestamp(first, unit='ms', tz='UTC').isoformat()}): only candles of the "
            "frame can be predicted from"
        )
    i = positions.astype(np.int64)
    h = int(horizon)
    look = int(lookback)

    # up[j]: the outcome of candle j (close[j + h] > close[j]), defined for j < n - h.
    up = (close[h:] > close[:-h]).astype(np.float64) if n > h else np.zeros(0)
    # repeat[j]: the outcome of j repeats the move into j (close[j] vs close[j - h]); j >= h.
    repeat = np.zeros(up.size)
    if up.size > h:
        repeat[h:] = (up[h:] == up[:-h]).astype(np.float64)

    # base_rate: outcomes j with i - lookback <= j and j + h <= i.
    base = _window_rate(up, lo=np.maximum(0, i - look), hi=i - h)
    # last_move: pairs (j - h, j) inside the window: j - h >= i - lookback, j >= h, j + h <= i.
    rate = _window_rate(repeat, lo=np.maximum(h, i - look + h), hi=i - h)
    has_last = i >= h
    last_up = np.zeros(i.size, dtype=bool)
    last_up[has_last] = close[i[has_last]] > close[i[has_last] - h]
    persistence = np.where(has_last, np.where(last_up, rate, 1.0 - rate), 0.5)

    return {
        "coin": np.full(i.size, 0.5),
        "base_rate": np.clip(base, *_CLIP),
        "last_move": np.clip(persistence, *_CLIP),
    }


def _window_rate(values: np.ndarray, *, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean of values[lo..hi] (inclusive) per row; 0.5 where the range is empty."""
    cumulative = np.concatenate(([0.0], np.cumsum(values)))
    count = hi - lo + 1
    has = count > 0
    rate = np.full(lo.size, 0.5)
    rate[has] = (cumulative[hi[has] + 1] - cumulative[lo[has]]) / count[has]
    return rate


@dataclass(frozen=True)
class DriftResult:
    """One version's live log loss beside the naive baselines', and the paired verdict."""

    pair: str
    model_type: str
    version: str
    rows: int
    model_log_loss: float
    baselines: dict[str, float]
    best_baseline: str
    verdict: PairedVerdict  # of model loss - best baseline loss, per row
    drifting: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the health answer."""
        return {
            "pair": self.pair,
            "modelType": self.model_type,
            "version": self.version,
            "rows": self.rows,
            "modelLogLoss": self.model_log_loss,
            "baselines": dict(self.baselines),
            "bestBaseline": self.best_baseline,
            "interval": [self.verdict.low, self.verdict.high],
            "drifting": self.drifting,
        }


class DriftCheck:
    """Compares versions' realised predictions with the naive baselines on the same candles."""

    def __init__(
        self,
        history: PredictionHistory,
        store: CandleStore,
        *,
        timeframe: str,
        window: int,
        margin: float = 0.0,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer of at least 1, got {window!r}")
        if not np.isfinite(margin):
            raise ValueError(f"margin must be a finite number, got {margin!r}")
        self.history = history
        self.store = store
        self.timeframe = timeframe
        self.window = window
        self.margin = float(margin)

    @property
    def min_outcomes(self) -> int:
        """Realised outcomes needed for a verdict."""
        return max(MIN_OUTCOMES, self.window // 2)

    def check(self, pair: str, model_type: str, version: str, horizon: int) -> DriftResult | None:
        """The verdict on the version's last `window` candles with a known outcome; None when
        fewer than `min_outcomes` are known.

        Raises CandlesNotFoundError when the store has no candles of `pair` at all.
        """
        realised = self.history.realised(
            pair=pair, model_type=model_type, version=version, limit=self.window
        )
        if len(realised) < self.min_outcomes:
            return None
        candles = self.store.load(pair, self.timeframe)
        stamps = pd.DatetimeIndex(candles.index).as_unit("ms").asi8
        times = np.array([t for t, _, _ in realised], dtype=np.int64)
        known = np.isin(times, stamps)
        if not known.all():
            # Settled against candles the store no longer holds: nothing to compare them with.
            logger.debug(
                "drift %s %s v%s: %d realised candle(s) not in the store, skipped",
                pair,
                model_type,
                version,
                int((~known).sum()),
            )
        if int(known.sum()) < self.min_outcomes:
            return None
        times = times[known]
        proba = np.array([p for _, p, _ in realised])[known]
        outcome = np.array([o for _, _, o in realised], dtype=np.int8)[known]

        naive = naive_probabilities(candles, times, horizon=horizon)
        model_losses = log_losses(proba, outcome)
        baseline_losses = {name: log_losses(naive[name], outcome) for name in NAIVE_BASELINES}
        means = {name: float(np.mean(losses)) for name, losses in baseline_losses.items()}
        best = min(NAIVE_BASELINES, key=lambda name: means[name])
        verdict = paired_block_bootstrap(model_losses - baseline_losses[best])
        return DriftResult(
            pair=pair,
            model_type=model_type,
            version=version,
            rows=int(times.size),
            model_log_loss=float(np.mean(model_losses)),
            baselines=means,
            best_baseline=best,
            verdict=verdict,
            drifting=verdict.worse(self.margin),
        )
