"""The incremental path (the service's): newest rows from the newest lookback + rows candles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.features.compute import latest_features
from pipelines.features.spec import INCREMENTAL_TOLERANCE, default_spec, feature_spec

Candles = Callable[[str], pd.DataFrame]


@pytest.mark.parametrize("pair", ["BTC", "ETH", "XMR", "RVN"])
def test_latest_rows_equal_full_history_rows_within_tolerance(
    pair: str, candles: Candles, full_features: Candles
) -> None:
    series = candles(pair)
    full = full_features(pair).to_numpy()
    spec = default_spec()
    rows = 60
    worst = 0.0
    # Many end points, from the first with a whole lookback to the newest candle.
    for end in [*range(spec.lookback + rows, len(series), 211), len(series)]:
        latest = latest_features(series.iloc[:end], rows=rows)
        assert latest.index.equals(series.index[end - rows : end])
        worst = max(worst, float(np.abs(latest.to_numpy() - full[end - rows : end]).max()))
    assert worst <= INCREMENTAL_TOLERANCE


def test_a_shorter_lookback_would_break_the_tolerance(
    candles: Candles, full_features: Candles
) -> None:
    # The chosen lookback is not arbitrary: half of it leaves ADX/RSI visibly unconverged.
    from pipelines.features.convergence import incremental_error

    series = candles("BTC").iloc[-4_000:]
    half = incremental_error(series, lookback=default_spec().lookback // 2, step=500)
    chosen = incremental_error(series, lookback=default_spec().lookback, step=500)
    assert half.max() > 100 * INCREMENTAL_TOLERANCE
    assert chosen.max() <= INCREMENTAL_TOLERANCE


def test_a_series_no_longer_than_lookback_plus_rows_is_computed_in_full_exactly(
    candles: Candles, full_features: Candles
) -> None:
    spec = default_spec()
    short = candles("XMR").iloc[: spec.lookback + 10]
    latest = latest_features(short, rows=60)
    expected = full_features("XMR").iloc[spec.lookback + 10 - 60 : spec.lookback + 10]
    np.testing.assert_array_equal(latest.to_numpy(), expected.to_numpy())


def test_latest_features_returns_the_requested_number_of_rows(candles: Candles) -> None:
    latest = latest_features(candles("BTC"), rows=1)
    assert latest.shape == (1, len(default_spec().names))
    assert latest.index[0] == candles("BTC").index[-1]


@pytest.mark.parametrize("rows", [0, -5, 2.5])
def test_rows_must_be_a_positive_integer(rows: object, candles: Candles) -> None:
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        latest_features(candles("BTC"), rows=rows)  # type: ignore[arg-type]


SetFeatures = Callable[[str, str, str], pd.DataFrame]
CandlesOf = Callable[[str, str], pd.DataFrame]


@pytest.mark.parametrize(
    ("name", "pair", "timeframe", "every"),
    [
        ("extended", "BTC", "1h", 211),
        ("extended", "RVN", "1h", 211),
        ("raw", "ETH", "1h", 211),
        ("raw", "XMR", "15m", 997),
        ("extended", "XMR", "15m", 997),
        ("extended", "ETH", "4h", 53),
    ],
)
def test_latest_rows_of_the_named_sets_equal_full_history_rows(
    name: str,
    pair: str,
    timeframe: str,
    every: int,
    candles_of: CandlesOf,
    set_features: SetFeatures,
) -> None:
    spec = feature_spec(name, timeframe=timeframe)
    series = candles_of(pair, timeframe)
    full = set_features(pair, name, timeframe).to_numpy()
    rows = 60
    worst = 0.0
    for end in [*range(spec.lookback + rows, len(series), every), len(series)]:
        latest = latest_features(series.iloc[:end], rows=rows, spec=spec)
        assert latest.index.equals(series.index[end - rows : end])
        expected = full[end - rows : end]
        np.testing.assert_array_equal(np.isnan(latest.to_numpy()), np.isnan(expected))
        worst = max(worst, float(np.nanmax(np.abs(latest.to_numpy() - expected))))
    assert worst <= INCREMENTAL_TOLERANCE


def test_a_lookback_one_day_shorter_misses_higher_timeframe_candles(
    candles_of: CandlesOf,
) -> None:
    # On 15m candles the daily windows set the lookback: a day less is not enough.
    from pipelines.features.convergence import incremental_error

    spec = feature_spec("extended", timeframe="15m")
    series = candles_of("BTC", "15m").iloc[-(spec.lookback + 600) :]
    short = incremental_error(series, lookback=spec.lookback - 96, step=7, spec=spec)
    chosen = incremental_error(series, lookback=spec.lookback, step=7, spec=spec)
    assert short.filter(like="tf1d").max() > 100 * INCREMENTAL_TOLERANCE
    assert chosen.max() <= INCREMENTAL_TOLERANCE
