"""Compute the feature matrix of a candle frame, in full or for the newest rows only.

Every formula reads rows up to and including t to produce row t (no look-ahead), so the features
of a prefix of a series equal the features of the whole series on the prefix's rows. The arrays
come from TA-Lib and numpy; the frame is built once, from one float64 block.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from pipelines.features.catalog import Inputs, InvalidCandlesError, epoch_seconds
from pipelines.features.groups import FEATURE_SET_GROUPS
from pipelines.features.groups.cross import REFERENCE_PREFIX
from pipelines.features.params import FeatureParams
from pipelines.features.spec import FeatureSpec, resolve_spec

__all__ = ["CANDLE_COLUMNS", "InvalidCandlesError", "compute_features", "latest_features"]

CANDLE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")


def compute_features(candles: pd.DataFrame, *, spec: FeatureSpec | None = None) -> pd.DataFrame:
    """The features of every candle.

    Args:
        candles: indexed by a `DatetimeIndex` (UTC), float columns open, high, low, close,
            volume, oldest first; rows are taken as consecutive candles (gaps are not filled).
        spec: the feature set to compute (`feature_spec(name)`); `default_spec()` when None.

    Raises:
        InvalidCandlesError: the frame is malformed, or (for `extended`) its candles do not
            open on whole multiples of the spec's base timeframe.

    Returns:
        Index = candles.index, columns = spec.names, float64. The first `spec.warmup` rows
        hold NaN; no value is infinite and none depends on a later candle.
    """
    spec, params = resolve_spec(spec)
    return _compute(candles, spec=spec, params=params)


def _compute(candles: pd.DataFrame, *, spec: FeatureSpec, params: FeatureParams) -> pd.DataFrame:
    inputs = _inputs(candles)
    matrix = np.empty((len(candles), len(spec.names)), dtype=np.float64)
    column = 0
    for group in FEATURE_SET_GROUPS[params.feature_set]:
        for values in group.compute(inputs, params):
            matrix[:, column] = values
            column += 1
    if column != len(spec.names):
        raise AssertionError(f"computed {column} features, the spec names {len(spec.names)}")
    return pd.DataFrame(matrix, index=candles.index, columns=_columns(spec.names), copy=False)


def latest_features(
    candles: pd.DataFrame, *, rows: int, spec: FeatureSpec | None = None
) -> pd.DataFrame:
    """The features of the newest `rows` candles, reading only the newest `lookback + rows`.

    This is the prediction path: it equals `compute_features(candles).tail(rows)` within
    `pipelines.features.spec.INCREMENTAL_TOLERANCE` (exactly when the series is no longer than
    `lookback + rows`).
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    resolved, params = resolve_spec(spec)
    window = candles.iloc[-(resolved.lookback + rows) :]
    return _compute(window, spec=resolved, params=params).iloc[-rows:]


@lru_cache(maxsize=8)
def _columns(names: tuple[str, ...]) -> pd.Index:
    # Building a string Index costs more than the indicators of a short window; it is immutable,
    # so frames can share it.
    return pd.Index(names)


def _inputs(candles: pd.DataFrame) -> Inputs:
    """Validate the frame and take its columns as contiguous float64 arrays."""
    missing = [c for c in CANDLE_COLUMNS if c not in candles.columns]
    if missing:
        raise InvalidCandlesError(
            f"candles lack column(s) {', '.join(missing)}; expected {', '.join(CANDLE_COLUMNS)}"
        )
    if not isinstance(candles.index, pd.DatetimeIndex):
        raise InvalidCandlesError(
            f"candles must be indexed by a DatetimeIndex, got {type(candles.index).__name__}"
        )
    arrays = {
        name: np.ascontiguousarray(candles[name].to_numpy(dtype=np.float64))
        for name in CANDLE_COLUMNS
    }
    prices = np.stack([arrays[c] for c in ("open", "high", "low", "close")])
    bad = ~(np.isfinite(prices) & (prices > 0)).all(axis=0)
    bad |= ~(np.isfinite(arrays["volume"]) & (arrays["volume"] >= 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InvalidCandlesError(
            f"candle at {candles.index[first]} has a non-positive or non-finite price or a "
            f"negative or non-finite volume ({int(bad.sum())} such rows); prices must be "
            "finite and > 0, volume finite and >= 0"
        )
    if not (candles.index.is_monotonic_increasing and candles.index.is_unique):
        raise InvalidCandlesError(
            "candles must be sorted by time, oldest first, without duplicate timestamps"
        )
    references: dict[str, np.ndarray] = {}
    for column in candles.columns:
        if isinstance(column, str) and column.startswith(REFERENCE_PREFIX):
            values = np.ascontiguousarray(candles[column].to_numpy(dtype=np.float64))
            wrong = ~np.isnan(values) & ~(np.isfinite(values) & (values > 0))
            if wrong.any():
                first = int(np.flatnonzero(wrong)[0])
                raise InvalidCandlesError(
                    f"{column} at {candles.index[first]} is {values[first]!r}: a reference "
                    "close must be finite and > 0, or NaN before that pair's first candle"
                )
            references[column.removeprefix(REFERENCE_PREFIX)] = values
    return Inputs(
        open=arrays["open"],
        high=arrays["high"],
        low=arrays["low"],
        close=arrays["close"],
        volume=arrays["volume"],
        epoch_seconds=epoch_seconds(candles.index),
        references=references,
    )
