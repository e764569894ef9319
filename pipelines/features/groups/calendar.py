"""Time-of-day and day-of-week encodings of the candle's open time (UTC), on the unit circle."""

from __future__ import annotations

import numpy as np

from pipelines.features.catalog import Array, Inputs, feature_group
from pipelines.features.params import FeatureParams

_DAY = 86_400.0
_WEEK = 7 * _DAY
# 1970-01-01 was a Thursday: shift so that the week starts on Monday 00:00 UTC.
_MONDAY_OFFSET = 3 * _DAY


@feature_group(
    "Calendar",
    lambda p: [
        ("hour_sin", 0, "sin(2π · time of day / 24 h) of the candle's open time, UTC"),
        ("hour_cos", 0, "cos(2π · time of day / 24 h) of the candle's open time, UTC"),
        ("dow_sin", 0, "sin(2π · time since Monday 00:00 / 7 days) of the open time, UTC"),
        ("dow_cos", 0, "cos(2π · time since Monday 00:00 / 7 days) of the open time, UTC"),
    ],
)
def calendar(x: Inputs, p: FeatureParams) -> list[Array]:
    day = 2.0 * np.pi * (np.mod(x.epoch_seconds, _DAY) / _DAY)
    week = 2.0 * np.pi * (np.mod(x.epoch_seconds + _MONDAY_OFFSET, _WEEK) / _WEEK)
    return [np.sin(day), np.cos(day), np.sin(week), np.cos(week)]
