"""The retraining trigger: should a slot (a pair and model type) train a new version now, and why.

One pure function, `trigger`, decides for the retraining policy's chore, for the drift check and
for offline replays alike. In order:

1. no production version: nothing (bootstrap or train it first);
2. nothing new: no candle arrived since the last training's data end;
3. a challenger is being decided on live candles: nothing, whatever is due (a new version would
   supersede it and restart its clock);
4. too few rows for the gate: a new version is compared with production only on rows whose
   outcome production never learnt (after its `fit_end`) and is up or down (a tie is no row);
   until at least `ML_GATE_MIN_ROWS` of them have realised, the gate would have to reject it
   after a full fit, so nothing starts;
5. due: production is stale (`stale`, priority 4), its live figures drift (`drift`, priority 4),
   or `ML_RETRAIN_INTERVAL_HOURS` of new candles arrived since the last training (`schedule`).
   A stale version retrains once per new data end: after a training used newer data, it waits
   for the interval like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.lifecycle.scores import decided, outcomes
from pipelines.lifecycle.staleness import model_age_hours, model_stale

STALE = "stale"
SCHEDULE = "schedule"
DRIFT = "drift"
# A stale or drifting production version goes before users' default (5); a scheduled one last.
PRIORITY_URGENT = 4
PRIORITY_SCHEDULE = 10


@dataclass(frozen=True)
class Production:
    """What the trigger needs of a slot's production version."""

    version: str
    data_end: pd.Timestamp  # the newest candle its training read
    fit_end: pd.Timestamp | None = None  # the newest candle whose outcome it learnt
    validated_through: pd.Timestamp | None = None  # the last candle of a live verdict kept it


@dataclass(frozen=True)
class Facts:
    """One slot now, as the caller gathered it."""

    name: str  # e.g. BTC-lstm
    newest: pd.Timestamp  # the newest candle of the pair
    production: Production | None
    last_training_end: pd.Timestamp | None = None  # newest data end of any ended training
    challenger: str | None = None  # the version aliased challenger
    drift: str | None = None  # why the drift check alarms, if it does
    # The pair's closes through `newest` (time index), to leave ties out of the unseen rows;
    # None: every candle counts.
    closes: pd.Series | None = None


@dataclass(frozen=True)
class Rules:
    """The settings the trigger reads, in hours and candles."""

    interval_hours: float  # ML_RETRAIN_INTERVAL_HOURS for the pair
    max_age_hours: float  # ML_MODEL_MAX_AGE_HOURS
    gate_min_rows: int  # ML_GATE_MIN_ROWS
    horizon: int  # candles ahead a label looks
    timeframe: pd.Timedelta  # one candle


@dataclass(frozen=True)
class Trigger:
    """What to do: `requested_by` None means nothing; `reason` says why either way."""

    requested_by: str | None
    reason: str
    priority: int = PRIORITY_SCHEDULE

    @property
    def due(self) -> bool:
        return self.requested_by is not None


def unseen_rows(
    *,
    fit_end: pd.Timestamp | None,
    newest: pd.Timestamp,
    rules: Rules,
    closes: pd.Series | None = None,
) -> int | None:
    """Rows after `fit_end` whose outcome is known by `newest` (None: `fit_end` unknown).

    With the pair's `closes`, only rows whose outcome is up or down count (the gate scores no
    tie); without, every candle does.
    """
    if fit_end is None:
        return None
    if closes is None:
        candles = int((newest - fit_end) // rules.timeframe)
        return max(0, candles - rules.horizon)
    known = closes[closes.index <= newest]
    values = known.to_numpy(dtype=float)
    ahead = known.shift(-rules.horizon).to_numpy(dtype=float)
    known_outcome = np.isfinite(ahead)  # the last `horizon` rows have none yet
    counted = (known.index > fit_end) & known_outcome & decided(outcomes(values, ahead))
    return int(counted.sum())


def trigger(facts: Facts, rules: Rules) -> Trigger:
    """The decision for one slot (see the module docstring)."""
    production = facts.production
    name = facts.name
    if production is None:
        return Trigger(None, f"{name}: no production version: bootstrap or train it first")
    last_end = production.data_end
    if facts.last_training_end is not None:
        last_end = max(last_end, facts.last_training_end)
    new_hours = (facts.newest - last_end) / pd.Timedelta(hours=1)
    since = f"since the last training's data end {_when(last_end)}"
    if new_hours <= 0:
        newest = _when(facts.newest)
        return Trigger(None, f"{name}: no new candles {since} (the newest is {newest})")
    due = _due(facts, production, rules, last_end=last_end, new_hours=new_hours, since=since)
    if not due.due:
        return due
    if facts.challenger is not None:
        return Trigger(
            None,
            f"{name} challenger version {facts.challenger} is being decided on live candles "
            f"(ML_CHALLENGER_MIN_OUTCOMES): a new version now would supersede it (due: "
            f"{due.reason})",
        )
    unseen = unseen_rows(
        fit_end=production.fit_end, newest=facts.newest, rules=rules, closes=facts.closes
    )
    if unseen is not None and unseen < rules.gate_min_rows:
        wait = (rules.gate_min_rows - unseen) * rules.timeframe / pd.Timedelta(hours=1)
        return Trigger(
            None,
            f"{name}: only {unseen} candles with a known outcome after production version "
            f"{production.version}'s last learnt candle {_when(production.fit_end)}, fewer than "
            f"the {rules.gate_min_rows} the gate compares on (ML_GATE_MIN_ROWS): a training now "
            f"would be rejected; due in {_h(wait)} (due: {due.reason})",
        )
    return due


def _due(
    facts: Facts,
    production: Production,
    rules: Rules,
    *,
    last_end: pd.Timestamp,
    new_hours: float,
    since: str,
) -> Trigger:
    name = facts.name
    age = model_age_hours(
        newest=facts.newest,
        data_end=production.data_end,
        validated_through=production.validated_through,
    )
    stale = model_stale(age, max_age_hours=rules.max_age_hours)
    validated = production.validated_through
    evidence = (
        f"its data ends {_when(production.data_end)}"
        if validated is None or validated <= production.data_end
        else f"live candles last validated it through {_when(validated)}"
    )
    stale_words = (
        f"{name} production version {production.version} is stale: {evidence}, {_h(age)} "
        f"before the newest candle (ML_MODEL_MAX_AGE_HOURS={rules.max_age_hours:g})"
    )
    if facts.drift is not None:
        return Trigger(DRIFT, f"{name}: {facts.drift}", PRIORITY_URGENT)
    if stale and last_end <= production.data_end:
        return Trigger(STALE, stale_words, PRIORITY_URGENT)
    due_words = (
        f"{_h(new_hours)} of new candles {since} (retrains every {rules.interval_hours:g} h "
        "of new data, ML_RETRAIN_INTERVAL_HOURS)"
    )
    if new_hours >= rules.interval_hours:
        if stale:
            return Trigger(STALE, f"{stale_words}, and {due_words}", PRIORITY_URGENT)
        return Trigger(SCHEDULE, f"{name}: {due_words}", PRIORITY_SCHEDULE)
    waiting = (
        f"{_h(new_hours)} of new candles {since}; it retrains once there are "
        f"{rules.interval_hours:g} h (ML_RETRAIN_INTERVAL_HOURS)"
    )
    if stale:
        return Trigger(
            None, f"{stale_words}, but a training used data to {_when(last_end)} since: {waiting}"
        )
    return Trigger(None, f"{name}: {waiting}")


def _when(moment: pd.Timestamp | None) -> str:
    """`2023-12-30T23:00Z`: minutes are the finest a candle needs."""
    return "unknown" if moment is None else pd.Timestamp(moment).strftime("%Y-%m-%dT%H:%MZ")


def _h(hours: float) -> str:
    return f"{round(hours, 1):g} h"
