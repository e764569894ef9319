"""Higher-timeframe features: candles of 4h or 1d built from the base candles, read once closed.

Base candles are bucketed by their open time into UTC-aligned buckets of the higher timeframe
(4h buckets start at 00:00, 04:00, ... UTC; 1d buckets at 00:00 UTC). A bucket's candle has the
highest high, the lowest low and the last close of the base candles present in it, so gaps
shrink a candle instead of shifting the buckets, and a bucket without candles is no candle.

Row t (the base candle opening at t and closing at t + base) reads only the higher-timeframe
candles whose bucket ended by t + base, and a candle's base candles all open before that close,
so no row reads a later candle. The bucket the series opens inside began before its first
candle and is never used, so a series' features do not depend on where in a day it starts.
Every window counts higher-timeframe candles (none smooths forever), so the newest rows
computed from a window of `lookback` candles equal the full-history rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from pipelines.features.catalog import (
    Array,
    Described,
    Inputs,
    InvalidCandlesError,
    distance,
    feature_group,
    ratio,
)
from pipelines.features.params import FeatureParams, timeframe_seconds

# Columns per higher timeframe, in the order `_described` names them.
_PER_TIMEFRAME = 5


def needed_rows(candles: int, *, ratio_to_base: int) -> int:
    """Base rows before `candles` higher-timeframe candles have closed, wherever the series starts.

    The series may open one base candle into a bucket (that bucket is skipped); then the c-th
    usable bucket closes at the end of row (c + 1) * ratio - 2.
    """
    return (candles + 1) * ratio_to_base - 2


def _described(p: FeatureParams) -> Described:
    n = p.higher_period
    base = timeframe_seconds(p.base_timeframe)
    out: Described = []
    for timeframe in p.higher_timeframes:
        per = timeframe_seconds(timeframe) // base
        last = f"the last {timeframe} candle closed by the row's close"
        stem = f"tf{timeframe}"
        out += [
            (
                f"{stem}_ret_1",
                needed_rows(2, ratio_to_base=per),
                f"ln(C[k] / C[k-1]): close-to-close log return of {last} (k) over the {timeframe} "
                "candle before it",
            ),
            (
                f"{stem}_range_pos",
                needed_rows(1, ratio_to_base=per),
                f"(close - L[k]) / (H[k] - L[k]): the row's close within the range of {last} "
                "(0.5 when that range is 0)",
            ),
            (
                f"{stem}_sma_dist_{n}",
                needed_rows(n, ratio_to_base=per),
                f"close / mean(C[k-{n - 1}..k]) - 1: the row's close against the SMA({n}) of "
                f"closed {timeframe} closes",
            ),
            (
                f"{stem}_rv_{n}",
                needed_rows(n + 1, ratio_to_base=per),
                f"population standard deviation of the last {n} closed {timeframe} log returns "
                "ln(C[i] / C[i-1])",
            ),
            (
                f"{stem}_rsi_{n}",
                needed_rows(n + 1, ratio_to_base=per),
                f"RSI of the last {n} closed {timeframe} close changes with simple sums "
                "(Cutler): 100 · gains / (gains + losses), 50 when the closes are flat",
            ),
        ]
    return out


@feature_group("Higher timeframes (closed candles only)", _described)
def higher_timeframes(x: Inputs, p: FeatureParams) -> list[Array]:
    base = timeframe_seconds(p.base_timeframe)
    opens = x.epoch_seconds.astype(np.int64)
    misaligned = np.flatnonzero(opens % base)
    if misaligned.size:
        when = pd.Timestamp(int(opens[misaligned[0]]), unit="s", tz="UTC")
        raise InvalidCandlesError(
            f"the candle at {when} does not open on a whole multiple of the base timeframe "
            f"{p.base_timeframe} (UTC) that the higher-timeframe features were built for; build "
            "the spec for the candles' own timeframe: feature_spec('extended', timeframe=...)"
        )
    out: list[Array] = []
    for timeframe in p.higher_timeframes:
        out += _timeframe(x, opens, base=base, span=timeframe_seconds(timeframe), n=p.higher_period)
    return out


def _timeframe(x: Inputs, opens: Array, *, base: int, span: int, n: int) -> list[Array]:
    rows = len(opens)
    if rows == 0:
        return [np.empty(0) for _ in range(_PER_TIMEFRAME)]
    bucket = opens // span
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    if bucket[0] * span < opens[0]:
        starts = starts[1:]  # the bucket the series opens inside is incomplete
    if starts.size == 0:
        return [np.full(rows, np.nan) for _ in range(_PER_TIMEFRAME)]
    ends = np.r_[starts[1:], rows] - 1
    close = x.close[ends]
    # reduceat reads rows from starts[0] on: the skipped bucket's rows are in no candle.
    high = np.maximum.reduceat(x.high, starts)
    low = np.minimum.reduceat(x.low, starts)
    # Candle i (bucket b) has closed by row t when (b + 1) * span <= opens[t] + base.
    closed = np.searchsorted(bucket[starts], (opens + base) // span - 1, side="right")
    last = closed - 1
    known = last >= 0

    def at_rows(values: Array) -> Array:
        out = np.full(rows, np.nan)
        out[known] = values[last[known]]
        return out

    change = np.diff(close)
    log_return = np.diff(np.log(close))
    return [
        at_rows(np.r_[np.nan, log_return]),
        ratio(x.close - at_rows(low), at_rows(high) - at_rows(low), fallback=0.5),
        distance(x.close, at_rows(_trailing(close, n, np.mean))),
        at_rows(np.r_[np.nan, _trailing(log_return, n, np.std)]),
        at_rows(np.r_[np.nan, _trailing(change, n, _cutler_rsi)]),
    ]


def _trailing(values: Array, n: int, stat: Callable[..., Array]) -> Array:
    """stat over values[i-n+1..i] at i, NaN for i < n - 1; each window summed on its own."""
    out = np.full(len(values), np.nan)
    if len(values) >= n:
        windows = np.lib.stride_tricks.sliding_window_view(values, n)
        out[n - 1 :] = stat(windows, axis=1)
    return out


def _cutler_rsi(changes: Array, axis: int) -> Array:
    gains = np.clip(changes, 0.0, None).sum(axis=axis)
    losses = np.clip(-changes, 0.0, None).sum(axis=axis)
    return ratio(100.0 * gains, gains + losses, fallback=50.0)
