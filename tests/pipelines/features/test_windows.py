"""Targets and LSTM windows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.features.windows import make_targets, make_windows

Candles = Callable[[str], pd.DataFrame]


def test_windows_have_the_lstm_shape_and_float32() -> None:
    matrix = np.arange(100 * 7, dtype=np.float64).reshape(100, 7)
    windows = make_windows(matrix, sequence_length=60)
    assert windows.shape == (41, 60, 7)
    assert windows.dtype == np.float32
    assert windows.flags.c_contiguous


def test_window_k_covers_rows_k_to_k_plus_l_minus_1(full_features: Candles) -> None:
    matrix = full_features("BTC").to_numpy()[77:]
    length = 60
    windows = make_windows(matrix, sequence_length=length)
    assert windows.shape == (len(matrix) - length + 1, length, matrix.shape[1])
    for k in (0, 1, 500, len(windows) - 1):
        np.testing.assert_array_equal(windows[k], matrix[k : k + length].astype(np.float32))
        np.testing.assert_array_equal(windows[k, -1], matrix[k + length - 1].astype(np.float32))


def test_a_matrix_shorter_than_the_sequence_is_refused() -> None:
    with pytest.raises(ValueError, match="between 1 and the number of rows \\(10\\), got 60"):
        make_windows(np.zeros((10, 3)), sequence_length=60)


def test_a_matrix_that_is_not_2d_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        make_windows(np.zeros((10, 3, 2)), sequence_length=2)


def test_targets_say_up_down_or_tie_for_the_close_h_candles_later() -> None:
    index = pd.date_range("2024-01-01", periods=6, freq="h", tz="UTC")
    candles = pd.DataFrame({"close": [10.0, 11.0, 11.0, 9.0, 12.0, 12.5]}, index=index)
    one = make_targets(candles, horizon=1)
    # 11 -> 11 is a tie: neither up nor down, no label (it was "down" before ties were dropped).
    np.testing.assert_array_equal(one.to_numpy(), [1.0, np.nan, 0.0, 1.0, 1.0, np.nan])
    two = make_targets(candles, horizon=2)
    np.testing.assert_array_equal(two.to_numpy(), [1.0, 0.0, 1.0, 1.0, np.nan, np.nan])
    assert one.index.equals(index)


def test_targets_of_real_candles_match_their_closes(candles: Candles) -> None:
    series = candles("ETH")
    targets = make_targets(series, horizon=3).to_numpy()
    close = series["close"].to_numpy()
    assert np.isnan(targets[-3:]).all()
    later, now = close[3:], close[:-3]
    np.testing.assert_array_equal(targets[:-3][later > now], 1.0)
    np.testing.assert_array_equal(targets[:-3][later < now], 0.0)
    assert np.isnan(targets[:-3][later == now]).all()


def test_an_unchanged_xmr_close_is_a_tie_not_a_down(candles: Candles) -> None:
    series = candles("XMR")
    targets = make_targets(series, horizon=1).to_numpy()[:-1]
    close = series["close"].to_numpy()
    unchanged = close[1:] == close[:-1]

    # Real hourly candles hold thousands of unchanged closes (about 4 % of XMR's hours).
    assert 0.02 < unchanged.mean() < 0.08
    assert np.isnan(targets[unchanged]).all()
    assert np.isfinite(targets[~unchanged]).all()
    assert set(np.unique(targets[~unchanged])) == {0.0, 1.0}


@pytest.mark.parametrize("horizon", [0, -1])
def test_targets_need_a_positive_horizon(horizon: int) -> None:
    frame = pd.DataFrame({"close": [1.0, 2.0]})
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        make_targets(frame, horizon=horizon)
