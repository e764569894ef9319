"""Volume features: volume against its average, Money Flow Index (TA-Lib)."""

from __future__ import annotations

import talib

from pipelines.features.catalog import Array, Inputs, feature_group, ratio
from pipelines.features.params import FeatureParams


@feature_group(
    "Relative volume",
    lambda p: [
        (
            f"vol_ratio_{n}",
            n - 1,
            f"volume / SMA({n}) of volume (1.0 when the average is 0)",
        )
        for n in p.periods
    ],
)
def volume_ratio(x: Inputs, p: FeatureParams) -> list[Array]:
    return [ratio(x.volume, talib.SMA(x.volume, timeperiod=n), fallback=1.0) for n in p.periods]


@feature_group(
    "Money Flow Index",
    lambda p: [
        (f"mfi_{n}", n, f"volume-weighted RSI of the typical price over {n} candles (0 to 100)")
        for n in p.periods
    ],
)
def mfi(x: Inputs, p: FeatureParams) -> list[Array]:
    return [talib.MFI(x.high, x.low, x.close, x.volume, timeperiod=n) for n in p.periods]
