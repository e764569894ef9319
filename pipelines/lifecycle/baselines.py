"""The naive live baselines: forecasters that know nothing but the candles before each one.

A served version is scored on the very candles it predicted; these are scored on the same ones:

- `coin`: always 0.5;
- `base_rate`: the rate of "up" among the outcomes realised within the last `lookback` candles;
- `last_move`: fitted persistence: over the same window, the rate at which a move's direction
  repeats the previous move's; p(up) is that rate after an up move and one minus it after a
  down move (0.5 after an unchanged close).

Each uses only candles at or before the predicted-from candle (the outcome of candle j counts at
candle i only when j + horizon <= i), so it could have been served live, as the version was.
Outcomes follow `pipelines.lifecycle.scores.outcomes`: an unchanged close is a tie, neither up
nor down, and counts in no rate. The shipped logistic baseline (`LOGISTIC`) is not computed
here: it travels in each version's bundle and is recorded beside every live prediction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.lifecycle.scores import outcomes

COIN = "coin"
BASE_RATE = "base_rate"
LAST_MOVE = "last_move"
LOGISTIC = "logistic"  # the bundle's logistic regression, scored in shadow on live candles
NAIVE_BASELINES: tuple[str, ...] = (COIN, BASE_RATE, LAST_MOVE)
DEFAULT_LOOKBACK = 720  # a month of hourly candles
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
    i = positions_of(index, candle_times_ms)
    close = candles["close"].to_numpy(dtype=np.float64)
    n = close.size
    h = int(horizon)
    look = int(lookback)

    # up[j]: the outcome of candle j (1 up, 0 down, NaN tie), defined for j < n - h.
    up = outcomes(close[:-h], close[h:]) if n > h else np.zeros(0)
    known = np.isfinite(up).astype(np.float64)
    rises = np.nan_to_num(up, nan=0.0)
    # repeat[j]: the outcome of j repeats the move into j (the outcome of j - h); both decided.
    repeat = np.zeros(up.size)
    pairs = np.zeros(up.size)
    if up.size > h:
        pairs[h:] = known[h:] * known[:-h]
        repeat[h:] = pairs[h:] * (rises[h:] == rises[:-h])

    # base_rate: outcomes j with i - lookback <= j and j + h <= i.
    base = _window_rate(rises, known, lo=np.maximum(0, i - look), hi=i - h)
    # last_move: pairs (j - h, j) inside the window: j - h >= i - lookback, j >= h, j + h <= i.
    rate = _window_rate(repeat, pairs, lo=np.maximum(h, i - look + h), hi=i - h)
    last = np.full(i.size, np.nan)
    has_last = i >= h
    last[has_last] = outcomes(close[i[has_last] - h], close[i[has_last]])
    persistence = np.where(last == 1.0, rate, np.where(last == 0.0, 1.0 - rate, 0.5))

    return {
        COIN: np.full(i.size, 0.5),
        BASE_RATE: np.clip(base, *_CLIP),
        LAST_MOVE: np.clip(persistence, *_CLIP),
    }


def positions_of(index: pd.DatetimeIndex, candle_times_ms: np.ndarray) -> np.ndarray:
    """Row positions in `index` of each time (epoch ms); every time must be a row of it."""
    stamps = pd.DatetimeIndex(index).as_unit("ms").asi8
    times = np.asarray(candle_times_ms, dtype=np.int64).ravel()
    positions = np.searchsorted(stamps, times)
    found = positions < stamps.size
    found[found] = stamps[positions[found]] == times[found]
    if not found.all():
        first = int(times[~found][0])
        raise ValueError(
            f"{int((~found).sum())} candle time(s) are not in the candles, first {first} "
            f"({pd.Timestamp(first, unit='ms', tz='UTC').isoformat()}): only candles of the "
            "frame can be predicted from"
        )
    return positions.astype(np.int64)


def _window_rate(
    hits: np.ndarray, counted: np.ndarray, *, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """sum(hits[lo..hi]) / sum(counted[lo..hi]) (inclusive) per row; 0.5 where nothing counts."""
    hit_sum = np.concatenate(([0.0], np.cumsum(hits)))
    count_sum = np.concatenate(([0.0], np.cumsum(counted)))
    hi_c = np.minimum(hi, hits.size - 1)
    rate = np.full(lo.size, 0.5)
    has = hi_c >= lo
    count = np.zeros(lo.size)
    count[has] = count_sum[hi_c[has] + 1] - count_sum[lo[has]]
    has &= count > 0
    rate[has] = (hit_sum[hi_c[has] + 1] - hit_sum[lo[has]]) / count[has]
    return rate
