"""Targets and LSTM windows: `(samples, sequence_length, features)` arrays from a feature matrix.

A target is up (1), down (0) or a tie (NaN: an unchanged close), which is no label.

The scaler lives in `pipelines.features.scaler` and is re-exported here, beside the windows it
feeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.features.scaler import FeatureScaler
from pipelines.lifecycle.scores import outcomes

__all__ = ["FeatureScaler", "make_targets", "make_windows"]


def make_targets(candles: pd.DataFrame, *, horizon: int) -> pd.Series:
    """1.0 where close[t + horizon] > close[t] (up), 0.0 where lower (down), NaN for a tie.

    A tie is an unchanged close (`pipelines.lifecycle.scores.outcomes`): neither up nor down, so
    it is no label. The last `horizon` rows have no outcome yet and are NaN too.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    close = candles["close"].to_numpy(dtype=np.float64)
    target = np.full(close.shape, np.nan)
    if horizon < len(close):
        target[:-horizon] = outcomes(close[:-horizon], close[horizon:])
    return pd.Series(target, index=candles.index, name=f"up_{horizon}")


def make_windows(matrix: np.ndarray, *, sequence_length: int) -> np.ndarray:
    """(n - L + 1, L, F) float32; window k covers rows k .. k+L-1 (predicts from row k+L-1).

    Raises:
        ValueError: `matrix` is not 2-D, or has fewer than `sequence_length` rows.
    """
    data = np.asarray(matrix)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D (rows, features) matrix, got shape {data.shape}")
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
        raise ValueError(f"sequence_length must be an integer, got {sequence_length!r}")
    if sequence_length < 1 or sequence_length > data.shape[0]:
        raise ValueError(
            f"sequence_length must be between 1 and the number of rows ({data.shape[0]}), "
            f"got {sequence_length}"
        )
    # sliding_window_view puts the window axis last: (n - L + 1, F, L) -> (n - L + 1, L, F).
    view = np.lib.stride_tricks.sliding_window_view(data, sequence_length, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)
