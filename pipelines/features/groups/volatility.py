"""Volatility bands and ranges: Bollinger Bands, normalised ATR (TA-Lib)."""

from __future__ import annotations

import talib

from pipelines.features.catalog import Array, Inputs, feature_group, ratio
from pipelines.features.params import FeatureParams


def _bollinger_described(p: FeatureParams) -> list[tuple[str, int, str]]:
    k = p.bollinger_stddev
    bands = f"SMA({{n}}) of close ± {k:g} population standard deviations"
    out = []
    for n in p.periods:
        out += [
            (
                f"bb_pos_{n}",
                n - 1,
                f"(close - lower) / (upper - lower) for the bands {bands.format(n=n)} "
                "(0.5 when the bands are flat)",
            ),
            (f"bb_width_{n}", n - 1, f"(upper - lower) / middle of the same {n}-candle bands"),
        ]
    return out


@feature_group("Bollinger Bands", _bollinger_described)
def bollinger(x: Inputs, p: FeatureParams) -> list[Array]:
    out: list[Array] = []
    for n in p.periods:
        upper, middle, lower = talib.BBANDS(
            x.close,
            timeperiod=n,
            nbdevup=p.bollinger_stddev,
            nbdevdn=p.bollinger_stddev,
            matype=talib.MA_Type.SMA,
        )
        width = upper - lower
        out += [ratio(x.close - lower, width, fallback=0.5), width / middle]
    return out


@feature_group(
    "Normalised average true range",
    lambda p: [
        (f"natr_{n}", n, f"100 * ATR({n}) / close, ATR with Wilder smoothing") for n in p.periods
    ],
)
def natr(x: Inputs, p: FeatureParams) -> list[Array]:
    return [talib.NATR(x.high, x.low, x.close, timeperiod=n) for n in p.periods]
