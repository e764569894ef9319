"""Our TA-Lib features against the independent pure-pandas `ta` library, where they coincide.

Windowed indicators must agree on every row; exponential and Wilder smoothings start from
different seeds in the two libraries (TA-Lib: an SMA; ta: the first value), so they must agree
once both have converged. MFI (ties of the typical price broken by rounding) and Parabolic SAR
(different start and reversal rules) are compared in bench/features.py's notes, not here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import ta

from pipelines.features.compute import compute_features

Candles = Callable[[str], pd.DataFrame]
CONVERGED = 1_000  # rows after which seeds no longer matter (see docs/features.md)


def _reference(frame: pd.DataFrame, n: int) -> dict[str, tuple[pd.Series, bool]]:
    """name -> (ta's value, whether it agrees from the first row)."""
    h, lo, c = frame["high"], frame["low"], frame["close"]
    bands = ta.volatility.BollingerBands(c, window=n, window_dev=2)
    stoch = ta.momentum.StochasticOscillator(h, lo, c, window=n, smooth_window=3).stoch_signal()
    adx = ta.trend.ADXIndicator(h, lo, c, window=n)
    return {
        f"sma_dist_{n}": (c / ta.trend.SMAIndicator(c, window=n).sma_indicator() - 1, True),
        f"bb_pos_{n}": (bands.bollinger_pband(), True),
        f"bb_width_{n}": (bands.bollinger_wband() / 100, True),
        f"willr_{n}": (ta.momentum.WilliamsRIndicator(h, lo, c, lbp=n).williams_r(), True),
        f"stoch_k_{n}": (stoch, True),
        f"stoch_d_{n}": (stoch.rolling(3).mean(), True),
        f"cci_{n}": (ta.trend.CCIIndicator(h, lo, c, window=n).cci(), True),
        f"rsi_{n}": (ta.momentum.RSIIndicator(c, window=n).rsi(), False),
        f"ema_dist_{n}": (c / ta.trend.EMAIndicator(c, window=n).ema_indicator() - 1, False),
        f"adx_{n}": (adx.adx(), False),
        f"plus_di_{n}": (adx.adx_pos(), False),
        f"minus_di_{n}": (adx.adx_neg(), False),
        f"natr_{n}": (
            100 * ta.volatility.AverageTrueRange(h, lo, c, window=n).average_true_range() / c,
            False,
        ),
    }


def _fixed_shape(frame: pd.DataFrame) -> dict[str, tuple[pd.Series, bool]]:
    h, lo, c = frame["high"], frame["low"], frame["close"]
    ichimoku = ta.trend.IchimokuIndicator(h, lo, window1=9, window2=26, window3=52)
    macd = ta.trend.MACD(c, window_slow=26, window_fast=12, window_sign=9)
    return {
        "ichimoku_tenkan_dist": (c / ichimoku.ichimoku_conversion_line() - 1, True),
        "ichimoku_kijun_dist": (c / ichimoku.ichimoku_base_line() - 1, True),
        "ichimoku_span_a_dist": (c / ichimoku.ichimoku_a().shift(26) - 1, True),
        "ichimoku_span_b_dist": (c / ichimoku.ichimoku_b().shift(26) - 1, True),
        "macd_line": (macd.macd() / c, False),
        "macd_signal": (macd.macd_signal() / c, False),
        "macd_hist": (macd.macd_diff() / c, False),
    }


@pytest.mark.parametrize("pair", ["BTC", "RVN"])
def test_features_agree_with_the_ta_library(pair: str, candles: Candles) -> None:
    frame = candles(pair).iloc[-3_000:]
    ours = compute_features(frame)
    # ta 0.11's PSAR writes `series[i]` by label; a RangeIndex keeps every ta indicator honest.
    plain = frame.reset_index(drop=True)
    references = _fixed_shape(plain)
    for n in (5, 10, 20):
        references.update(_reference(plain, n))
    assert len(references) == 46
    for name, (theirs, from_start) in references.items():
        a = ours[name].to_numpy()
        b = theirs.to_numpy()
        start = 0 if from_start else CONVERGED
        both = ~np.isnan(a[start:]) & ~np.isnan(b[start:])
        assert both.sum() > 1_900, name
        np.testing.assert_allclose(
            a[start:][both], b[start:][both], rtol=1e-9, atol=1e-8, err_msg=name
        )
