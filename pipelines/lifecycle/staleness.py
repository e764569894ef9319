"""Staleness: is a prediction's candle, or a version's knowledge, too old to act on?

A version's age is counted from the newest evidence the lifecycle holds about it: the end of
the candles its training read (`data_range`), or, when later, the last candle of a live verdict
that kept it (`validated_through`: the challenger comparison that promoted it, or the one that
retired a newer challenger against it). So a challenger promoted after days of shadow scoring
is not born stale: the days it waited were spent proving it on candles it had never seen. The
served answer (`modelStale`, HOLD) and the retraining trigger both count age this way.

The settings fit this rule (`misfits` says how they do not): in shadow mode production is
validated at every decided challenger, and the next challenger is decided once a training has
run and its `ML_CHALLENGER_MIN_OUTCOMES` shadow predictions have realised, so production's age
peaks at about that many candles plus two horizons and one more candle, plus a training's
longest run (`ML_TRAINING_TIMEOUT`): `steady_peak_age_hours`. `ML_MODEL_MAX_AGE_HOURS` must
exceed it, and `ML_CHALLENGER_MAX_HOURS` must leave a challenger time to collect its rows
(`challenger_rows_hours`); left unset, both derive from the timeframe (`default_max_age_hours`,
`default_challenger_max_hours`), which keeps the original 168 h and 336 h for hourly candles.
"""

from __future__ import annotations

import math

import pandas as pd

# The defaults in candles: a week and two weeks of hourly candles.
DEFAULT_MAX_AGE_CANDLES = 168
DEFAULT_CHALLENGER_MAX_CANDLES = 336
# Hours of slack a derived ML_MODEL_MAX_AGE_HOURS keeps above the steady-state peak.
SLACK_HOURS = 24.0


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


def steady_peak_age_hours(
    *, min_outcomes: int, horizon: int, timeframe_hours: float, training_hours: float
) -> float:
    """Production's largest age in shadow mode's steady state: from the candle that validated
    it, one horizon until that verdict is known, a training (at most `training_hours`), one
    candle until the challenger's first prediction, `min_outcomes` predictions, and one more
    horizon until the last of them is realised."""
    return (min_outcomes + 2 * horizon + 1) * timeframe_hours + training_hours


def challenger_rows_hours(*, min_outcomes: int, horizon: int, timeframe_hours: float) -> float:
    """The least time a new challenger needs for `min_outcomes` realised rows: its first
    prediction is of the next candle, and the last row's outcome is `horizon` candles later."""
    return (min_outcomes + horizon + 1) * timeframe_hours


def default_max_age_hours(
    *, min_outcomes: int, horizon: int, timeframe_hours: float, training_hours: float
) -> float:
    """`ML_MODEL_MAX_AGE_HOURS` left unset: a week of candles, or the steady-state peak plus a
    day, whichever is longer (whole hours)."""
    peak = steady_peak_age_hours(
        min_outcomes=min_outcomes,
        horizon=horizon,
        timeframe_hours=timeframe_hours,
        training_hours=training_hours,
    )
    return float(math.ceil(max(DEFAULT_MAX_AGE_CANDLES * timeframe_hours, peak + SLACK_HOURS)))


def default_challenger_max_hours(
    *, min_outcomes: int, horizon: int, timeframe_hours: float
) -> float:
    """`ML_CHALLENGER_MAX_HOURS` left unset: two weeks of candles, or twice the time its rows
    take to realise, whichever is longer (whole hours)."""
    rows = challenger_rows_hours(
        min_outcomes=min_outcomes, horizon=horizon, timeframe_hours=timeframe_hours
    )
    return float(math.ceil(max(DEFAULT_CHALLENGER_MAX_CANDLES * timeframe_hours, 2 * rows)))


def misfits(
    *,
    max_age_hours: float,
    challenger_max_hours: float,
    min_outcomes: int,
    horizon: int,
    timeframe: str,
    timeframe_hours: float,
    training_hours: float,
    shadow: bool,
) -> list[str]:
    """One sentence per setting that cannot work with the others, naming the values and what
    is allowed (empty when they fit). The age bound applies in shadow mode only: offline
    promotion validates nothing on live candles."""
    problems = []
    needs = (
        f"ML_CHALLENGER_MIN_OUTCOMES={min_outcomes} at ML_TIMEFRAME={timeframe} "
        f"(ML_HORIZON={horizon})"
    )
    rows = challenger_rows_hours(
        min_outcomes=min_outcomes, horizon=horizon, timeframe_hours=timeframe_hours
    )
    if challenger_max_hours <= rows:
        default = default_challenger_max_hours(
            min_outcomes=min_outcomes, horizon=horizon, timeframe_hours=timeframe_hours
        )
        problems.append(
            f"ML_CHALLENGER_MAX_HOURS={challenger_max_hours:g} cannot fit {needs}: a challenger "
            f"needs at least {rows:g} h for its realised rows, so every challenger would be "
            f"retired undecided; allowed: more than {rows:g} (unset, it is {default:g})"
        )
    peak = steady_peak_age_hours(
        min_outcomes=min_outcomes,
        horizon=horizon,
        timeframe_hours=timeframe_hours,
        training_hours=training_hours,
    )
    if shadow and max_age_hours <= peak:
        default = default_max_age_hours(
            min_outcomes=min_outcomes,
            horizon=horizon,
            timeframe_hours=timeframe_hours,
            training_hours=training_hours,
        )
        problems.append(
            f"ML_MODEL_MAX_AGE_HOURS={max_age_hours:g} cannot fit {needs} and "
            f"ML_TRAINING_TIMEOUT ({training_hours:g} h): in shadow mode production's age "
            f"reaches {peak:g} h before the next challenger is decided, so it would serve stale "
            f"(HOLD) in steady state; allowed: more than {peak:g} (unset, it is {default:g}), "
            "or fewer ML_CHALLENGER_MIN_OUTCOMES, or ML_PROMOTION=offline"
        )
    return problems
