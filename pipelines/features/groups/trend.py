"""Trend features: MACD, moving-average distances, Ichimoku, ADX/DI, Parabolic SAR (TA-Lib)."""

from __future__ import annotations

import talib

from pipelines.features.catalog import Array, Inputs, distance, feature_group, shift
from pipelines.features.params import FeatureParams


def _macd_described(p: FeatureParams) -> list[tuple[str, int, str]]:
    shape = f"EMA({p.macd_fast}) - EMA({p.macd_slow}) of close"
    # TA-Lib aligns the three outputs on the signal line.
    warmup = p.macd_slow - 1 + p.macd_signal - 1
    return [
        ("macd_line", warmup, f"MACD line, {shape}, divided by close"),
        ("macd_signal", warmup, f"EMA({p.macd_signal}) of the MACD line, divided by close"),
        ("macd_hist", warmup, "MACD line minus signal line, divided by close"),
    ]


@feature_group("MACD", _macd_described)
def macd(x: Inputs, p: FeatureParams) -> list[Array]:
    line, signal, hist = talib.MACD(
        x.close, fastperiod=p.macd_fast, slowperiod=p.macd_slow, signalperiod=p.macd_signal
    )
    return [line / x.close, signal / x.close, hist / x.close]


@feature_group(
    "Simple moving average distance",
    lambda p: [(f"sma_dist_{n}", n - 1, f"close / SMA({n}) of close - 1") for n in p.periods],
)
def sma_distance(x: Inputs, p: FeatureParams) -> list[Array]:
    return [distance(x.close, talib.SMA(x.close, timeperiod=n)) for n in p.periods]


@feature_group(
    "Exponential moving average distance",
    lambda p: [
        (f"ema_dist_{n}", n - 1, f"close / EMA({n}) of close - 1 (EMA seeded with an SMA)")
        for n in p.periods
    ],
)
def ema_distance(x: Inputs, p: FeatureParams) -> list[Array]:
    return [distance(x.close, talib.EMA(x.close, timeperiod=n)) for n in p.periods]


def _ichimoku_described(p: FeatureParams) -> list[tuple[str, int, str]]:
    t, k, b, d = (
        p.ichimoku_tenkan,
        p.ichimoku_kijun,
        p.ichimoku_senkou_b,
        p.ichimoku_displacement,
    )
    mid = "(highest high + lowest low) / 2"
    return [
        ("ichimoku_tenkan_dist", t - 1, f"close / tenkan-sen - 1; tenkan-sen = {mid} over {t}"),
        ("ichimoku_kijun_dist", k - 1, f"close / kijun-sen - 1; kijun-sen = {mid} over {k}"),
        (
            "ichimoku_span_a_dist",
            max(t, k) - 1 + d,
            f"close / senkou span A - 1; span A = (tenkan + kijun) / 2 of {d} candles ago "
            "(the cloud under the current candle)",
        ),
        (
            "ichimoku_span_b_dist",
            b - 1 + d,
            f"close / senkou span B - 1; span B = {mid} over {b}, of {d} candles ago",
        ),
    ]


@feature_group("Ichimoku cloud", _ichimoku_described)
def ichimoku(x: Inputs, p: FeatureParams) -> list[Array]:
    tenkan = talib.MIDPRICE(x.high, x.low, timeperiod=p.ichimoku_tenkan)
    kijun = talib.MIDPRICE(x.high, x.low, timeperiod=p.ichimoku_kijun)
    # The spans are plotted `displacement` candles ahead; the cloud at row t was computed at
    # row t - displacement, so reading it at t looks only backwards.
    span_a = shift((tenkan + kijun) / 2.0, p.ichimoku_displacement)
    span_b = shift(
        talib.MIDPRICE(x.high, x.low, timeperiod=p.ichimoku_senkou_b), p.ichimoku_displacement
    )
    return [distance(x.close, level) for level in (tenkan, kijun, span_a, span_b)]


def _adx_described(p: FeatureParams) -> list[tuple[str, int, str]]:
    out = []
    for n in p.periods:
        out += [
            (f"adx_{n}", 2 * n - 1, f"Average Directional Index over {n} candles (0 to 100)"),
            (f"plus_di_{n}", n, f"+DI over {n} candles, Wilder smoothing (0 to 100)"),
            (f"minus_di_{n}", n, f"-DI over {n} candles, Wilder smoothing (0 to 100)"),
        ]
    return out


@feature_group("Directional movement (ADX, +DI, -DI)", _adx_described)
def adx(x: Inputs, p: FeatureParams) -> list[Array]:
    out: list[Array] = []
    for n in p.periods:
        out += [
            talib.ADX(x.high, x.low, x.close, timeperiod=n),
            talib.PLUS_DI(x.high, x.low, x.close, timeperiod=n),
            talib.MINUS_DI(x.high, x.low, x.close, timeperiod=n),
        ]
    return out


@feature_group(
    "Parabolic SAR",
    lambda p: [
        (
            "sar_dist",
            1,
            f"(close - SAR) / close; SAR with acceleration {p.sar_acceleration} "
            f"up to {p.sar_maximum} (positive in an uptrend)",
        )
    ],
)
def parabolic_sar(x: Inputs, p: FeatureParams) -> list[Array]:
    sar = talib.SAR(x.high, x.low, acceleration=p.sar_acceleration, maximum=p.sar_maximum)
    return [(x.close - sar) / x.close]
