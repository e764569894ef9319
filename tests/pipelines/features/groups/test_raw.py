"""The raw set: log prices against the previous close and relative volume, finite everywhere."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.features.compute import compute_features
from pipelines.features.spec import feature_spec

SetFeatures = Callable[[str, str, str], pd.DataFrame]


def test_raw_columns_are_log_prices_against_the_previous_close() -> None:
    index = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    frame = pd.DataFrame(
        {
            "open": [10.0, 10.5, 11.0],
            "high": [11.0, 12.0, 11.5],
            "low": [9.0, 10.0, 10.5],
            "close": [10.0, 11.0, 11.0],
            "volume": [1.0, 2.0, 3.0],
        },
        index=index,
    )
    features = compute_features(frame, spec=feature_spec("raw"))
    assert np.isnan(features.iloc[0, :4]).all()
    row = features.iloc[1]
    assert row["raw_open"] == pytest.approx(np.log(10.5 / 10.0))
    assert row["raw_high"] == pytest.approx(np.log(12.0 / 10.0))
    assert row["raw_low"] == pytest.approx(np.log(10.0 / 10.0))
    assert row["raw_close"] == pytest.approx(np.log(11.0 / 10.0))
    assert features["raw_close"].iloc[2] == 0.0


def test_raw_volume_is_log_one_plus_volume_over_its_trailing_mean() -> None:
    index = pd.date_range("2024-01-01", periods=45, freq="h", tz="UTC")
    volume = np.r_[np.arange(1.0, 21.0), np.zeros(20), [5.0, 0.0, 0.0, 0.0, 0.0]]
    frame = pd.DataFrame(
        {"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": volume}, index=index
    )
    raw = compute_features(frame, spec=feature_spec("raw"))["raw_volume"].to_numpy()
    assert np.isnan(raw[:19]).all()
    assert raw[19] == pytest.approx(np.log1p(20.0 / 10.5))  # mean of 1..20 is 10.5
    assert raw[39] == pytest.approx(np.log(2.0))  # 20 zero volumes: the fallback ratio 1
    assert raw[40] == pytest.approx(np.log1p(5.0 / 0.25))
    assert np.isfinite(raw[19:]).all()


@pytest.mark.parametrize("pair", ["BTC", "RVN"])
def test_raw_features_are_finite_after_their_warmup(pair: str, set_features: SetFeatures) -> None:
    matrix = set_features(pair, "raw", "1h").to_numpy()
    warmup = feature_spec("raw").warmup
    assert np.isfinite(matrix[warmup:]).all()
    assert np.isnan(matrix[warmup - 1]).any()
