"""The raw set: each candle's prices against the previous close, and its relative volume.

For networks that read the price and volume sequence itself rather than indicators: log
returns keep the columns scale-free, so one scaler serves every pair and price level.
"""

from __future__ import annotations

import numpy as np
import talib

from pipelines.features.catalog import Array, Inputs, feature_group, ratio, shift
from pipelines.features.params import FeatureParams


@feature_group(
    "Raw candles",
    lambda p: [
        ("raw_open", 1, "ln(open[t] / close[t-1])"),
        ("raw_high", 1, "ln(high[t] / close[t-1])"),
        ("raw_low", 1, "ln(low[t] / close[t-1])"),
        ("raw_close", 1, "ln(close[t] / close[t-1]): the 1-candle log return"),
        (
            "raw_volume",
            p.raw_volume_period - 1,
            f"ln(1 + volume / SMA({p.raw_volume_period}) of volume); ln 2 when the average is 0",
        ),
    ],
)
def raw_candles(x: Inputs, p: FeatureParams) -> list[Array]:
    previous = shift(x.log_close, 1)
    # ln(1 + ratio) rather than ln(ratio): a zero-volume candle stays finite.
    relative = ratio(x.volume, talib.SMA(x.volume, timeperiod=p.raw_volume_period), fallback=1.0)
    return [
        np.log(x.open) - previous,
        np.log(x.high) - previous,
        np.log(x.low) - previous,
        x.log_close - previous,
        np.log1p(relative),
    ]
