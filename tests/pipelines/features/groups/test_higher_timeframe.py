"""Higher-timeframe features: closed candles only, calendar buckets, gaps, other timeframes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.candles.timeframes import timeframe_delta
from pipelines.features.compute import InvalidCandlesError, compute_features
from pipelines.features.params import FeatureParams
from pipelines.features.spec import default_spec, feature_defs, feature_spec
from tests.pipelines.features.conftest import resample

CandlesOf = Callable[[str, str], pd.DataFrame]
SetFeatures = Callable[[str, str, str], pd.DataFrame]
STEP = {tf: timeframe_delta(tf) for tf in ("15m", "1h", "4h")}


def _reference(candles: pd.DataFrame, *, base: str, higher: str, n: int) -> pd.DataFrame:
    """The five features of one higher timeframe, by pandas resampling and rolling windows."""
    bars = resample(candles, higher)
    bars = bars[bars.index >= candles.index[0]]  # the bucket the series opens inside is skipped
    closes_at = pd.DatetimeIndex(bars.index + timeframe_delta(higher)).as_unit("s").asi8
    row_closes = pd.DatetimeIndex(candles.index + STEP[base]).as_unit("s").asi8
    last = np.searchsorted(closes_at, row_closes, side="right") - 1
    close = bars["close"]
    change = close.diff()
    per_bar = pd.DataFrame(
        {
            "ret": np.log(close).diff(),
            "high": bars["high"],
            "low": bars["low"],
            "sma": close.rolling(n).mean(),
            "rv": np.log(close).diff().rolling(n).std(ddof=0),
            "rsi": 100 * change.clip(lower=0).rolling(n).sum() / change.abs().rolling(n).sum(),
        }
    ).to_numpy()
    at_rows = np.full((len(candles), per_bar.shape[1]), np.nan)
    at_rows[last >= 0] = per_bar[last[last >= 0]]
    rows = pd.DataFrame(
        at_rows, index=candles.index, columns=["ret", "high", "low", "sma", "rv", "rsi"]
    )
    own = candles["close"]
    stem = f"tf{higher}"
    return pd.DataFrame(
        {
            f"{stem}_ret_1": rows["ret"],
            f"{stem}_range_pos": (own - rows["low"]) / (rows["high"] - rows["low"]),
            f"{stem}_sma_dist_{n}": own / rows["sma"] - 1,
            f"{stem}_rv_{n}": rows["rv"],
            f"{stem}_rsi_{n}": rows["rsi"],
        }
    )


@pytest.mark.parametrize(
    ("pair", "timeframe"), [("BTC", "1h"), ("RVN", "1h"), ("ETH", "4h"), ("XMR", "15m")]
)
def test_values_equal_a_pandas_resampling_of_the_closed_candles(
    pair: str, timeframe: str, candles_of: CandlesOf, set_features: SetFeatures
) -> None:
    series = candles_of(pair, timeframe)
    features = set_features(pair, "extended", timeframe)
    params = feature_spec("extended", timeframe=timeframe).params
    for higher in params["higher_timeframes"]:
        expected = _reference(series, base=timeframe, higher=higher, n=params["higher_period"])
        got = features[expected.columns]
        assert np.array_equal(np.isnan(got.to_numpy()), np.isnan(expected.to_numpy()))
        np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-7, atol=1e-9)


def _day_series(start: str, hours: int) -> pd.DataFrame:
    index = pd.date_range(start, periods=hours, freq="h", tz="UTC", name="timestamp")
    rng = np.random.default_rng(7)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, hours)))
    return pd.DataFrame(
        {
            "open": close * 0.999,
            "high": close * 1.004,
            "low": close * 0.995,
            "close": close,
            "volume": 10.0,
        },
        index=index,
    )


def test_a_day_is_read_from_the_row_closing_it_and_not_one_row_earlier() -> None:
    series = _day_series("2024-01-01 00:00", 72)
    features = compute_features(series, spec=feature_spec("extended"))
    # Row 23 (Jan 1 23:00) closes at Jan 2 00:00: the first row that may read Jan 1's candle.
    assert np.isnan(features["tf1d_range_pos"].iloc[22])
    day = series.iloc[:24]
    expected = (series["close"].iloc[23] - day["low"].min()) / (
        day["high"].max() - day["low"].min()
    )
    assert features["tf1d_range_pos"].iloc[23] == pytest.approx(expected)
    # Row 46 still reads Jan 1 alone (no return yet); row 47 reads Jan 2 over Jan 1.
    assert np.isnan(features["tf1d_ret_1"].iloc[46])
    close = series["close"].to_numpy()
    assert features["tf1d_ret_1"].iloc[47] == pytest.approx(np.log(close[47] / close[23]))
    assert features["tf1d_ret_1"].iloc[70] == features["tf1d_ret_1"].iloc[47]
    # The 4h candle 00:00-04:00 is read from row 3 (closing at 04:00) on.
    assert np.isnan(features["tf4h_range_pos"].iloc[2])
    assert not np.isnan(features["tf4h_range_pos"].iloc[3])


def test_a_series_opening_inside_a_day_skips_that_day_and_meets_its_declared_warmups() -> None:
    # Opening one candle into a day is the latest start: each feature starts at its warm-up.
    spec = feature_spec("extended")
    features = compute_features(_day_series("2024-01-01 01:00", spec.warmup + 48), spec=spec)
    defs = feature_defs(FeatureParams.from_dict(spec.params))
    for feature in defs[len(default_spec().names) :]:
        column = features[feature.name].to_numpy()
        assert int(np.flatnonzero(~np.isnan(column))[0]) == feature.warmup, feature.name
    assert max(f.warmup for f in defs) == spec.warmup


def test_a_missing_day_is_no_candle_and_later_buckets_stay_on_the_calendar(
    candles_of: CandlesOf,
) -> None:
    series = candles_of("ETH", "1h").iloc[:3_000]
    day = series.index[1_000].normalize()
    hour = pd.Timedelta(hours=1)
    # Drop the candles from 13:00 of one day to 05:00 two days later: the day between has none.
    holed = series[(series.index < day + 13 * hour) | (series.index >= day + 53 * hour)]
    spec = feature_spec("extended")
    features = compute_features(holed, spec=spec)
    assert np.isfinite(features.to_numpy()[spec.warmup :]).all()
    expected = _reference(holed, base="1h", higher="1d", n=14)
    np.testing.assert_allclose(
        features[expected.columns].to_numpy(), expected.to_numpy(), rtol=1e-7, atol=1e-9
    )
    # The last row of the day after the hole reads that day over the half day before the hole.
    row = holed.index.get_loc(day + 71 * hour)
    before_hole = holed["close"].loc[: day + 12 * hour].iloc[-1]
    assert features["tf1d_ret_1"].iloc[row] == pytest.approx(
        np.log(holed["close"].iloc[row] / before_hole)
    )


def test_candles_shorter_than_the_spec_base_timeframe_are_refused(candles_of: CandlesOf) -> None:
    quarter = candles_of("BTC", "15m").iloc[:2_000]
    with pytest.raises(InvalidCandlesError, match="base timeframe 1h") as error:
        compute_features(quarter, spec=feature_spec("extended"))
    assert "timeframe=" in str(error.value)
    assert str(quarter.index[1]) in str(error.value)


@pytest.mark.parametrize("timeframe", ["15m", "4h"])
@pytest.mark.parametrize("cut", [50, 333, 1_999, 4_321])
def test_prefix_features_equal_whole_series_features_on_other_timeframes(
    timeframe: str, cut: int, candles_of: CandlesOf, set_features: SetFeatures
) -> None:
    spec = feature_spec("extended", timeframe=timeframe)
    prefix = compute_features(candles_of("BTC", timeframe).iloc[:cut], spec=spec)
    whole = set_features("BTC", "extended", timeframe).iloc[:cut]
    np.testing.assert_array_equal(prefix.to_numpy(), whole.to_numpy())


@pytest.mark.parametrize("timeframe", ["15m", "1h", "4h"])
def test_changing_the_last_candle_of_a_day_on_leaves_earlier_rows_unchanged(
    timeframe: str, candles_of: CandlesOf
) -> None:
    spec = feature_spec("extended", timeframe=timeframe)
    series = candles_of("XMR", timeframe).iloc[: spec.warmup + 1_500].copy()
    before = compute_features(series, spec=spec)
    # From the last candle of a day on: the row before it must not read that day's candle.
    start = spec.warmup + 700
    closes = pd.DatetimeIndex(series.index[start:] + STEP[timeframe])
    start += int(np.flatnonzero(closes.hour == 0)[0])
    series.iloc[start:, :4] *= 1.5
    series.iloc[start:, 4] *= 3.0
    after = compute_features(series, spec=spec)
    np.testing.assert_array_equal(after.iloc[:start].to_numpy(), before.iloc[:start].to_numpy())
    higher = [n for n in spec.names if n.startswith("tf")]
    assert not np.allclose(after[higher].iloc[start:], before[higher].iloc[start:])


def test_a_base_timeframe_of_4h_keeps_only_the_daily_features(set_features: SetFeatures) -> None:
    features = set_features("ETH", "extended", "4h")
    assert not any(name.startswith("tf4h") for name in features.columns)
    assert "tf1d_rsi_14" in features.columns
    assert np.isfinite(features.to_numpy()[feature_spec("extended", timeframe="4h").warmup :]).all()
