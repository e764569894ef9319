"""A version's age counts from its newest evidence; the settings that bound it fit together."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines.candles.timeframes import timeframe_delta
from pipelines.lifecycle.staleness import (
    candle_stale,
    model_age_hours,
    model_stale,
    steady_peak_age_hours,
)
from pipelines.settings import Settings

T0 = pd.Timestamp("2024-03-01T00:00Z")
H = pd.Timedelta(hours=1)


@pytest.mark.parametrize(
    ("data_end", "validated_through", "age"),
    [
        (T0 - 200 * H, None, 200.0),  # no live verdict: from the data end
        (T0 - 200 * H, T0 - 5 * H, 5.0),  # kept by a live verdict 5 h ago
        (T0 - 10 * H, T0 - 50 * H, 10.0),  # a verdict older than the data: the data end
        (T0 + 2 * H, None, 0.0),  # never negative
    ],
)
def test_a_version_s_age_counts_from_the_later_of_its_data_end_and_validated_through(
    data_end: pd.Timestamp, validated_through: pd.Timestamp | None, age: float
) -> None:
    found = model_age_hours(newest=T0, data_end=data_end, validated_through=validated_through)
    assert found == age


def test_stale_means_older_than_the_bound() -> None:
    assert not model_stale(168.0, max_age_hours=168)
    assert model_stale(168.5, max_age_hours=168)
    assert not candle_stale(candle_age_ms=7_200_000, timeframe_ms=3_600_000, stale_after=2)
    assert candle_stale(candle_age_ms=7_200_001, timeframe_ms=3_600_000, stale_after=2)


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_the_hourly_defaults_are_the_original_ones_and_fit() -> None:
    settings = _settings()
    assert settings.model_max_age_hours == 168
    assert settings.challenger_max_hours == 336
    peak = steady_peak_age_hours(
        min_outcomes=settings.challenger_min_outcomes,
        horizon=settings.horizon,
        timeframe_hours=1.0,
        training_hours=settings.training_timeout_ms / 3_600_000,
    )
    assert peak < settings.model_max_age_hours
    assert settings.challenger_min_outcomes + 2 < settings.challenger_max_hours


@pytest.mark.parametrize("timeframe", ["1m", "5m", "15m", "1h", "4h", "1d", "1w"])
def test_unset_bounds_derive_from_the_timeframe_and_always_fit(timeframe: str) -> None:
    settings = _settings(timeframe=timeframe)
    step = timeframe_delta(timeframe) / H
    peak = steady_peak_age_hours(
        min_outcomes=settings.challenger_min_outcomes,
        horizon=settings.horizon,
        timeframe_hours=step,
        training_hours=settings.training_timeout_ms / 3_600_000,
    )
    assert settings.model_max_age_hours > peak
    assert settings.challenger_max_hours > (settings.challenger_min_outcomes + 2) * step
    assert settings.model_max_age_hours >= 168 * step  # never shorter than a week of candles


def test_more_outcomes_than_the_default_age_allows_raise_the_derived_age() -> None:
    settings = _settings(challenger_min_outcomes=200)
    assert settings.model_max_age_hours > 200 + 3 + 6
    assert settings.challenger_max_hours >= 2 * (200 + 2)


def test_set_values_that_cannot_fit_are_refused_naming_them_and_what_is_allowed() -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(model_max_age_hours=100)
    message = str(caught.value)
    assert "ML_MODEL_MAX_AGE_HOURS=100 cannot fit ML_CHALLENGER_MIN_OUTCOMES=120" in message
    assert "allowed: more than 129 (unset, it is 168)" in message

    with pytest.raises(ValidationError, match=r"ML_CHALLENGER_MAX_HOURS=100 cannot fit"):
        _settings(challenger_max_hours=100)
    # 4-hour candles: a week of hours is too little for 120 outcomes of them.
    with pytest.raises(ValidationError, match=r"ML_MODEL_MAX_AGE_HOURS=168 cannot fit .*4h"):
        _settings(timeframe="4h", model_max_age_hours=168)
    # Offline promotion validates nothing live: the age bound is the operator's.
    assert _settings(promotion_mode="offline", model_max_age_hours=1).model_max_age_hours == 1


def test_values_that_fit_are_kept_as_set() -> None:
    settings = _settings(model_max_age_hours=130, challenger_max_hours=123)
    assert (settings.model_max_age_hours, settings.challenger_max_hours) == (130, 123)
