"""Price features without an indicator library: returns, realised volatility, candle shape."""

from __future__ import annotations

import numpy as np
import talib

from pipelines.features.catalog import Array, Inputs, feature_group, shift
from pipelines.features.params import FeatureParams


@feature_group(
    "Log returns",
    lambda p: [
        (f"ret_{h}", h, f"ln(close[t] / close[t-{h}]): log return over the last {h} candles")
        for h in p.return_horizons
    ],
)
def returns(x: Inputs, p: FeatureParams) -> list[Array]:
    return [x.log_close - shift(x.log_close, h) for h in p.return_horizons]


@feature_group(
    "Realised volatility",
    lambda p: [
        (
            f"rv_{n}",
            n,
            f"population standard deviation of the 1-candle log returns of the last {n} candles",
        )
        for n in p.periods
    ],
)
def realised_volatility(x: Inputs, p: FeatureParams) -> list[Array]:
    return [talib.STDDEV(x.log_return, timeperiod=n, nbdev=1.0) for n in p.periods]


@feature_group(
    "Candle shape",
    lambda p: [
        ("hl_range", 0, "(high - low) / close: the candle's high-low range"),
        ("body", 0, "(close - open) / open: the candle's body, signed"),
        ("upper_wick", 0, "(high - max(open, close)) / close: the upper shadow"),
        ("lower_wick", 0, "(min(open, close) - low) / close: the lower shadow"),
    ],
)
def candle_shape(x: Inputs, p: FeatureParams) -> list[Array]:
    top = np.maximum(x.open, x.close)
    bottom = np.minimum(x.open, x.close)
    return [
        (x.high - x.low) / x.close,
        (x.close - x.open) / x.open,
        (x.high - top) / x.close,
        (bottom - x.low) / x.close,
    ]
