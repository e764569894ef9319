"""Fixtures of the feature tests: the bundled candles (read-only) and their full features.

Besides the bundled 1h candles, `candles_of(pair, timeframe)` gives 4h candles resampled from
them and 15m-like candles split from them, for the features that depend on the timeframe.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pandas as pd
import pytest

from pipelines.candles.store import CandleStore
from pipelines.candles.timeframes import timeframe_delta
from pipelines.features.compute import compute_features
from pipelines.features.spec import feature_spec
from pipelines.settings import PROJECT_ROOT

BUNDLED = PROJECT_ROOT / "data" / "ohlcv"


@cache
def _store() -> CandleStore:
    # The bundled files are immutable, so one store (and its parse cache) serves every test.
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED / "no-ingested-data")


@cache
def _features(pair: str) -> pd.DataFrame:
    return compute_features(_store().load(pair))


@cache
def _candles_of(pair: str, timeframe: str) -> pd.DataFrame:
    hourly = _store().load(pair)
    if timeframe == "1h":
        return hourly
    if timeframe == "4h":
        return resample(hourly, "4h")
    if timeframe == "15m":
        return split_quarters(hourly)
    raise ValueError(f"no test candles of timeframe {timeframe!r}: 15m, 1h or 4h")


@cache
def _set_features(pair: str, name: str, timeframe: str) -> pd.DataFrame:
    spec = feature_spec(name, timeframe=timeframe)
    return compute_features(_candles_of(pair, timeframe), spec=spec)


def resample(candles: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Candles of a longer timeframe in UTC-aligned buckets; a bucket without candles is none."""
    frame = candles.resample(timeframe_delta(timeframe)).agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    )
    return frame.dropna(subset=["close"])


def split_quarters(candles: pd.DataFrame) -> pd.DataFrame:
    """Four 15-minute candles per candle: open -> high -> low -> mid-range -> close.

    Their highs, lows, last close and summed volume are the hour's, so they are a plausible
    15m series with the gaps of the original.
    """
    o, h, lo, c = (candles[k].to_numpy() for k in ("open", "high", "low", "close"))
    path = np.stack([o, h, lo, (h + lo) / 2, c], axis=1)  # (rows, 5 points)
    opens, closes = path[:, :-1], path[:, 1:]
    hours = pd.DatetimeIndex(candles.index)
    opened = hours.as_unit("s").asi8
    index = pd.to_datetime((opened[:, None] + np.arange(4) * 900).ravel(), unit="s", utc=True)
    return pd.DataFrame(
        {
            "open": opens.ravel(),
            "high": np.maximum(opens, closes).ravel(),
            "low": np.minimum(opens, closes).ravel(),
            "close": closes.ravel(),
            "volume": np.repeat(candles["volume"].to_numpy() / 4, 4),
        },
        index=index.as_unit(hours.unit).rename(hours.name),
    )


@pytest.fixture
def candles() -> Callable[[str], pd.DataFrame]:
    """`candles("BTC")`: the bundled hourly candles of a pair."""
    return _store().load


@pytest.fixture
def full_features() -> Callable[[str], pd.DataFrame]:
    """`full_features("BTC")`: the default features of a pair's whole bundled history."""
    return _features


@pytest.fixture
def candles_of() -> Callable[[str, str], pd.DataFrame]:
    """`candles_of("BTC", "4h")`: a pair's candles of 15m (split), 1h (bundled) or 4h."""
    return _candles_of


@pytest.fixture
def set_features() -> Callable[[str, str, str], pd.DataFrame]:
    """`set_features("BTC", "extended", "4h")`: a named set's features of `candles_of`."""
    return _set_features
