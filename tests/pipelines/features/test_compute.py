"""The full feature matrix: names, warm-up, finiteness, no look-ahead, input checks."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.features.compute import InvalidCandlesError, compute_features
from pipelines.features.params import FeatureParams
from pipelines.features.spec import (
    FeatureSpecMismatchError,
    default_spec,
    feature_defs,
    feature_spec,
)

PAIRS = ("BTC", "ETH", "XMR", "RVN")
Candles = Callable[[str], pd.DataFrame]


def test_feature_set_has_at_least_52_uniquely_named_features() -> None:
    spec = default_spec()
    assert len(spec.names) >= 52
    assert len(set(spec.names)) == len(spec.names)
    assert all(name.isidentifier() and name == name.lower() for name in spec.names)


def test_every_issue_indicator_is_present_at_periods_5_10_20() -> None:
    names = set(default_spec().names)
    for period in (5, 10, 20):
        for stem in (
            "rsi", "bb_pos", "bb_width", "sma_dist", "ema_dist", "vol_ratio", "stoch_k",
            "stoch_d", "willr", "adx", "plus_di", "minus_di", "cci", "rv",
        ):  # fmt: skip
            assert f"{stem}_{period}" in names
    for name in (
        "macd_line", "macd_signal", "macd_hist", "ichimoku_tenkan_dist", "ichimoku_kijun_dist",
        "ichimoku_span_a_dist", "ichimoku_span_b_dist", "sar_dist", "hl_range", "ret_1",
        "hour_sin", "hour_cos", "dow_sin", "dow_cos",
    ):  # fmt: skip
        assert name in names


@pytest.mark.parametrize("pair", PAIRS)
def test_frame_has_candle_index_spec_columns_and_float64(
    pair: str, candles: Candles, full_features: Candles
) -> None:
    features = full_features(pair)
    assert features.index.equals(candles(pair).index)
    assert tuple(features.columns) == default_spec().names
    assert set(features.dtypes) == {np.dtype("float64")}


@pytest.mark.parametrize("pair", PAIRS)
def test_warmup_rows_are_the_only_nan_and_nothing_is_infinite(
    pair: str, full_features: Candles
) -> None:
    matrix = full_features(pair).to_numpy()
    warmup = default_spec().warmup
    assert not np.isinf(matrix).any()
    assert not np.isnan(matrix[warmup:]).any()
    assert np.isnan(matrix[warmup - 1]).any()


def test_each_feature_starts_exactly_at_its_declared_warmup(full_features: Candles) -> None:
    features = full_features("ETH")
    for feature in feature_defs(FeatureParams()):
        column = features[feature.name].to_numpy()
        first_defined = int(np.flatnonzero(~np.isnan(column))[0])
        assert first_defined == feature.warmup, feature.name
    assert default_spec().warmup == max(f.warmup for f in feature_defs(FeatureParams()))


@pytest.mark.parametrize("pair", ["BTC", "XMR", "RVN"])
@pytest.mark.parametrize("cut", [40, 78, 601, 5_000, 12_345, 23_985])
def test_prefix_features_equal_whole_series_features_on_prefix_rows(
    pair: str, cut: int, candles: Candles, full_features: Candles
) -> None:
    prefix = compute_features(candles(pair).iloc[:cut])
    whole = full_features(pair).iloc[:cut]
    # Exactly equal, NaN in the same places: TA-Lib runs the same arithmetic on both.
    np.testing.assert_array_equal(prefix.to_numpy(), whole.to_numpy())
    assert prefix.index.equals(whole.index)


def test_changing_a_future_candle_leaves_earlier_features_unchanged(candles: Candles) -> None:
    series = candles("ETH").iloc[:3_000].copy()
    before = compute_features(series)
    series.iloc[2_000:, :4] *= 1.5  # every price from row 2000 on
    series.iloc[2_000:, 4] *= 3.0  # and the volume
    after = compute_features(series)
    np.testing.assert_array_equal(after.iloc[:2_000].to_numpy(), before.iloc[:2_000].to_numpy())
    assert not np.allclose(after.iloc[2_000:].to_numpy(), before.iloc[2_000:].to_numpy())


def test_flat_candles_give_finite_neutral_values_not_inf() -> None:
    index = pd.date_range("2024-01-01", periods=200, freq="h", tz="UTC", name="timestamp")
    flat = pd.DataFrame(
        {"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 0.0}, index=index
    )
    features = compute_features(flat)
    matrix = features.to_numpy()
    assert not np.isinf(matrix).any()
    assert not np.isnan(matrix[default_spec().warmup :]).any()
    assert features["bb_pos_20"].iloc[-1] == 0.5
    assert features["vol_ratio_20"].iloc[-1] == 1.0
    assert features["sma_dist_20"].iloc[-1] == 0.0


def test_calendar_features_encode_hour_and_weekday_of_open_time() -> None:
    # 2024-01-01 was a Monday; 06:00 is a quarter of the day.
    index = pd.DatetimeIndex(["2024-01-01 06:00", "2024-01-03 18:00"], tz="UTC")
    frame = pd.DataFrame({c: [1.0, 1.0] for c in ("open", "high", "low", "close")}, index=index)
    frame["volume"] = 1.0
    features = compute_features(frame)
    assert features["hour_sin"].iloc[0] == pytest.approx(1.0)
    assert features["hour_cos"].iloc[1] == pytest.approx(0.0, abs=1e-12)
    assert features["hour_sin"].iloc[1] == pytest.approx(-1.0)
    week_angle = 2 * np.pi * (2.75 / 7)  # Wednesday 18:00 is 2.75 days after Monday 00:00
    assert features["dow_sin"].iloc[1] == pytest.approx(np.sin(week_angle))
    assert features["dow_cos"].iloc[0] == pytest.approx(np.cos(2 * np.pi * 0.25 / 7))


def test_candles_without_a_column_are_refused_naming_it(candles: Candles) -> None:
    with pytest.raises(InvalidCandlesError, match="lack column\\(s\\) volume"):
        compute_features(candles("BTC").drop(columns=["volume"]))


def test_candles_with_a_non_positive_price_are_refused_naming_the_row(candles: Candles) -> None:
    bad = candles("BTC").iloc[:300].copy()
    bad.loc[bad.index[150], "low"] = 0.0
    with pytest.raises(InvalidCandlesError, match=re.escape(str(bad.index[150]))):
        compute_features(bad)


def test_candles_indexed_by_integers_are_refused(candles: Candles) -> None:
    with pytest.raises(InvalidCandlesError, match="DatetimeIndex"):
        compute_features(candles("BTC").iloc[:100].reset_index(drop=True))


def test_unsorted_candles_are_refused(candles: Candles) -> None:
    with pytest.raises(InvalidCandlesError, match="sorted"):
        compute_features(candles("BTC").iloc[:100].iloc[::-1])


def test_duplicate_timestamps_are_refused(candles: Candles) -> None:
    series = candles("BTC").iloc[:100]
    doubled = pd.concat([series.iloc[:50], series.iloc[49:]])
    with pytest.raises(InvalidCandlesError, match="duplicate timestamps"):
        compute_features(doubled)


def test_a_spec_from_other_code_is_refused(candles: Candles) -> None:
    spec = default_spec()
    foreign = type(spec)(
        names=spec.names,
        params=spec.params,
        version="0123456789ab",
        warmup=spec.warmup,
        lookback=spec.lookback,
    )
    with pytest.raises(FeatureSpecMismatchError, match="0123456789ab"):
        compute_features(candles("BTC").iloc[:100], spec=foreign)


def test_features_of_other_params_follow_their_spec(candles: Candles) -> None:
    from pipelines.features.spec import build_spec

    spec = build_spec(FeatureParams(periods=(7, 14), return_horizons=(1, 24)))
    features = compute_features(candles("BTC").iloc[:500], spec=spec)
    assert tuple(features.columns) == spec.names
    assert "rsi_14" in features.columns
    assert "rsi_5" not in features.columns
    assert not np.isnan(features.to_numpy()[spec.warmup :]).any()


SetFeatures = Callable[[str, str, str], pd.DataFrame]


@pytest.mark.parametrize("name", ["extended", "raw"])
@pytest.mark.parametrize("pair", ["BTC", "XMR"])
@pytest.mark.parametrize("cut", [30, 395, 5_000, 12_346, 23_985])
def test_prefix_features_of_the_named_sets_equal_whole_series_features(
    name: str, pair: str, cut: int, candles: Candles, set_features: SetFeatures
) -> None:
    spec = feature_spec(name)
    prefix = compute_features(candles(pair).iloc[:cut], spec=spec)
    whole = set_features(pair, name, "1h").iloc[:cut]
    np.testing.assert_array_equal(prefix.to_numpy(), whole.to_numpy())


@pytest.mark.parametrize("name", ["extended", "raw"])
def test_changing_a_future_candle_leaves_earlier_features_of_the_named_sets_unchanged(
    name: str, candles: Candles
) -> None:
    spec = feature_spec(name)
    series = candles("ETH").iloc[:3_000].copy()
    before = compute_features(series, spec=spec)
    series.iloc[2_011:, :4] *= 1.5  # from a row in the middle of a day on
    series.iloc[2_011:, 4] *= 3.0
    after = compute_features(series, spec=spec)
    np.testing.assert_array_equal(after.iloc[:2_011].to_numpy(), before.iloc[:2_011].to_numpy())
    assert not np.allclose(after.iloc[2_011:].to_numpy(), before.iloc[2_011:].to_numpy())


@pytest.mark.parametrize("name", ["extended", "raw"])
@pytest.mark.parametrize("pair", ["ETH", "RVN"])
def test_named_sets_are_finite_after_their_warmup_and_follow_their_spec(
    name: str, pair: str, candles: Candles, set_features: SetFeatures
) -> None:
    spec = feature_spec(name)
    features = set_features(pair, name, "1h")
    assert tuple(features.columns) == spec.names
    assert features.index.equals(candles(pair).index)
    assert np.isfinite(features.to_numpy()[spec.warmup :]).all()
    assert not np.isinf(features.to_numpy()).any()
