"""The incremental path (the service's): newest rows from the newest lookback + rows candles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.features.compute import latest_features
from pipelines.features.spec import INCREMENTAL_TOLERANCE, default_spec

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
