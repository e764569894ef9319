"""Staleness: is a prediction's candle, or a version's knowledge, too old to act on?

A version's age is counted from the newest evidence the lifecycle holds about it: the end of
the candles its training read (`data_range`), or, when later, the last candle of a live verdict
that kept it (`validated_through`: the challenger comparison that promoted it, or the one that
retired a newer challenger against it). So a challenger promoted after a week of shadow scoring
is not born stale: the week it waited was spent proving it on candles it had never seen.
"""

from __future__ import annotations

import pandas as pd


def model_age_hours(
    *, newest: pd.Timestamp, data_end: pd.Timestamp, validated_through: pd.Timestamp | None = None
) -> float:
    """Hours from the version's newest evidence to the newest candle (never negative)."""
    since = data_end if validated_through is None else max(data_end, validated_through)
    return max(0.0, (newest - since) / pd.Timedelta(hours=1))


def model_stale(age_hours: float, *, max_age_hours: float) -> bool:
    """Older than `ML_MODEL_MAX_AGE_HOURS`."""
    return age_hours > max_age_hours


def candle_stale(*, candle_age_ms: int, timeframe_ms: int, stale_after: float) -> bool:
    """A prediction's candle closed more than `stale_after` timeframes ago (`ML_STALE_AFTER`)."""
    return candle_age_ms > stale_after * timeframe_ms
