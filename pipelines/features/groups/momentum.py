"""Oscillators: RSI, stochastic %K/%D, Williams %R, CCI (TA-Lib)."""

from __future__ import annotations

import talib

from pipelines.features.catalog import Array, Inputs, feature_group
from pipelines.features.params import FeatureParams


@feature_group(
    "Relative Strength Index",
    lambda p: [
        (f"rsi_{n}", n, f"RSI over {n} candles, Wilder smoothing (0 to 100)") for n in p.periods
    ],
)
def rsi(x: Inputs, p: FeatureParams) -> list[Array]:
    return [talib.RSI(x.close, timeperiod=n) for n in p.periods]


def _stochastic_described(p: FeatureParams) -> list[tuple[str, int, str]]:
    s = p.stoch_smoothing
    out = []
    for n in p.periods:
        # TA-Lib aligns both outputs on the later one (%D).
        warmup = n - 1 + 2 * (s - 1)
        out.append(
            (
                f"stoch_k_{n}",
                warmup,
                f"slow stochastic %K: SMA({s}) of 100 * (close - lowest low) / "
                f"(highest high - lowest low) over {n} candles",
            )
        )
        out.append((f"stoch_d_{n}", warmup, f"slow stochastic %D: SMA({s}) of stoch_k_{n}"))
    return out


@feature_group("Stochastic oscillator", _stochastic_described)
def stochastic(x: Inputs, p: FeatureParams) -> list[Array]:
    out: list[Array] = []
    s = p.stoch_smoothing
    for n in p.periods:
        k, d = talib.STOCH(
            x.high,
            x.low,
            x.close,
            fastk_period=n,
            slowk_period=s,
            slowk_matype=talib.MA_Type.SMA,
            slowd_period=s,
            slowd_matype=talib.MA_Type.SMA,
        )
        out += [k, d]
    return out


@feature_group(
    "Williams %R",
    lambda p: [
        (
            f"willr_{n}",
            n - 1,
            f"-100 * (highest high - close) / (highest high - lowest low) over {n} candles",
        )
        for n in p.periods
    ],
)
def williams_r(x: Inputs, p: FeatureParams) -> list[Array]:
    return [talib.WILLR(x.high, x.low, x.close, timeperiod=n) for n in p.periods]


@feature_group(
    "Commodity Channel Index",
    lambda p: [
        (
            f"cci_{n}",
            n - 1,
            f"(typical price - its SMA) / (0.015 * mean absolute deviation) over {n} candles",
        )
        for n in p.periods
    ],
)
def cci(x: Inputs, p: FeatureParams) -> list[Array]:
    return [talib.CCI(x.high, x.low, x.close, timeperiod=n) for n in p.periods]
