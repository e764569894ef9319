"""The feature groups of each feature set, in the column order of its feature matrix.

Adding, removing or reordering a group changes the feature names, and so the spec version.
"""

from __future__ import annotations

from pipelines.features.catalog import FeatureGroup
from pipelines.features.groups.calendar import calendar
from pipelines.features.groups.cross import cross_pair
from pipelines.features.groups.higher_timeframe import higher_timeframes
from pipelines.features.groups.momentum import cci, rsi, stochastic, williams_r
from pipelines.features.groups.price import candle_shape, realised_volatility, returns
from pipelines.features.groups.raw import raw_candles
from pipelines.features.groups.trend import (
    adx,
    ema_distance,
    ichimoku,
    macd,
    parabolic_sar,
    sma_distance,
)
from pipelines.features.groups.volatility import bollinger, natr
from pipelines.features.groups.volume import mfi, volume_ratio

GROUPS: tuple[FeatureGroup, ...] = (
    returns,
    realised_volatility,
    candle_shape,
    rsi,
    macd,
    bollinger,
    sma_distance,
    ema_distance,
    volume_ratio,
    mfi,
    stochastic,
    williams_r,
    ichimoku,
    adx,
    cci,
    parabolic_sar,
    natr,
    calendar,
)

# Keyed by the names of `pipelines.features.params.FEATURE_SETS` (a test keeps them equal).
FEATURE_SET_GROUPS: dict[str, tuple[FeatureGroup, ...]] = {
    "default": GROUPS,
    "extended": (*GROUPS, higher_timeframes),
    "raw": (raw_candles,),
    "cross": (*GROUPS, cross_pair),
}
