"""The lifecycle's policy with the default settings, on a simulated clock of hourly candles.

Only the decisions run, as the service and the worker call them: the retraining trigger, the
challenger policy, staleness and drift; the offline gate is a stand-in that admits every training.
Every hour a candle arrives, the served versions predict it (the challenger in shadow), the
challenger policy looks, a finished training becomes the challenger, and the trigger may start
the next training. A training takes `TRAINING_HOURS`; its version's data ends at its start and,
as a refit that holds the newest `ML_GATE_MIN_ROWS` rows out, it learnt outcomes through
`data_end - (gate_min_rows + horizon)` candles. Both versions' probabilities are drawn alike, so
their losses have equal means and the live verdicts are what noise makes of them. Drift compares
production with a baseline drawn alike too (the null: no alarm is due), unless a run makes every
version wrong after some hour (then it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.candles.timeframes import timeframe_delta
from pipelines.lifecycle import challenger as policy
from pipelines.lifecycle.drift import drift_state
from pipelines.lifecycle.proof import PROVEN
from pipelines.lifecycle.retraining import DRIFT, Facts, Production, Rules, trigger, unseen_rows
from pipelines.lifecycle.scores import log_losses
from pipelines.lifecycle.staleness import model_age_hours, model_stale
from pipelines.settings import Settings

HOURS = 3_000
TRAINING_HOURS = 2
T0 = pd.Timestamp("2024-01-01T00:00Z")


@dataclass
class Version:
    """A registered version and the predictions it made (candle index -> probability)."""

    name: str
    data_end: int  # candle index
    fit_end: int
    validated_through: int | None = None
    candles: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)  # the drift baseline on its candles

    def realised(self, up: np.ndarray, newest: int, horizon: int) -> Realised:
        """Its predictions whose outcome is known at candle `newest`."""
        times = np.asarray(self.candles, dtype=np.int64)
        known = times <= newest - horizon
        return Realised(
            candle_time=times[known] * 3_600_000,
            probability=np.asarray(self.probabilities)[known],
            outcome=up[times[known]],
            horizon=np.full(int(known.sum()), horizon),
        )


@dataclass
class Realised:
    """One version's realised rows, in the shape the challenger policy reads."""

    candle_time: np.ndarray
    probability: np.ndarray
    outcome: np.ndarray
    horizon: np.ndarray


@dataclass
class Log:
    """What the run saw, for the assertions."""

    # hour, unseen rows after production's fit_end, the challenger then (if any), requester
    trainings: list[tuple[int, int, str | None, str | None]] = field(default_factory=list)
    decisions: list[tuple[int, str, float]] = field(default_factory=list)  # hour, action, age
    ages: list[tuple[int, float]] = field(default_factory=list)  # hour, production's age
    alarms: list[tuple[int, str]] = field(default_factory=list)  # hour, version drifting


def _at(hour: int) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=hour)


def _production(version: Version) -> Production:
    through = version.validated_through
    return Production(
        version=version.name,
        data_end=_at(version.data_end),
        fit_end=_at(version.fit_end),
        validated_through=None if through is None else _at(through),
    )


def drift_of(version: Version, up: np.ndarray, *, newest: int, horizon: int) -> str | None:
    """Why `version` drifts at candle `newest` (its realised rows against its baseline's), or
    None: the drift decision the service's chore asks."""
    times = np.asarray(version.candles, dtype=np.int64)
    known = times <= newest - horizon
    if not known.any():
        return None
    y = up[times[known]]
    differences = log_losses(np.asarray(version.probabilities)[known], y) - log_losses(
        np.asarray(version.baseline)[known], y
    )
    state = drift_state(differences)
    return f"version {version.name} drifts" if state.drifting else None


def simulate(settings: Settings, *, seed: int = 0, wrong_from: int | None = None) -> Log:
    """The run; from hour `wrong_from` on (if given) every version's forecasts are wrong."""
    rng = np.random.default_rng(seed)
    horizon = settings.horizon
    assert timeframe_delta(settings.timeframe) == pd.Timedelta(hours=1)
    rules = Rules(
        interval_hours=settings.retrain_interval_for("BTC"),
        max_age_hours=settings.model_max_age_hours,
        gate_min_rows=settings.gate_min_rows,
        horizon=horizon,
        timeframe=timeframe_delta(settings.timeframe),
    )
    decide_rules = policy.Rules(
        min_outcomes=settings.challenger_min_outcomes,
        max_hours=settings.challenger_max_hours,
        margin=settings.promotion_margin,
    )
    up = rng.integers(0, 2, HOURS + horizon + 1).astype(np.int8)
    held_out = settings.gate_min_rows + horizon
    production = Version("1", data_end=0, fit_end=-held_out)
    challenger: Version | None = None
    challenger_since = 0
    training: tuple[int, int] | None = None  # (start hour, finish hour)
    last_training_end: int | None = None
    count = 1
    log = Log()
    for hour in range(HOURS):
        # The new candle: each served version predicts it (probabilities alike in law).
        for version in (production, challenger):
            if version is not None:
                version.candles.append(hour)
                p = float(np.clip(rng.normal(0.5, 0.05), 0.01, 0.99))
                if wrong_from is not None and hour >= wrong_from:
                    p = 0.35 if up[hour] else 0.65  # sure of the wrong direction
                version.probabilities.append(p)
                version.baseline.append(float(np.clip(rng.normal(0.5, 0.05), 0.01, 0.99)))
        # The challenger policy looks.
        if challenger is not None:
            found = policy.decide(
                challenger=challenger.realised(up, hour, horizon),
                production=production.realised(up, hour, horizon),
                challenger_proof=PROVEN,
                production_proof=PROVEN,
                hours=float(hour - challenger_since),
                rules=decide_rules,
                production_version=production.name,
            )
            if found.action != policy.WAITING:
                through = (
                    None if found.last_candle_ms is None else found.last_candle_ms // 3_600_000
                )
                if found.action == policy.PROMOTE:
                    production = challenger
                if through is not None:
                    production.validated_through = int(through)
                challenger = None
                log.decisions.append((hour, found.action, _age(production, hour)))
        # A finished training: the stand-in gate admits it as the challenger.
        if training is not None and hour >= training[1]:
            count += 1
            start = training[0]
            challenger = Version(str(count), data_end=start, fit_end=start - held_out)
            challenger_since = hour
            last_training_end = start
            training = None
        # The retraining trigger (a slot with a training queued or running is skipped).
        drift = drift_of(production, up, newest=hour, horizon=horizon)
        if drift is not None and (not log.alarms or log.alarms[-1][1] != production.name):
            log.alarms.append((hour, production.name))
        if training is None:
            want = trigger(
                Facts(
                    name="BTC-lstm",
                    newest=_at(hour),
                    production=_production(production),
                    last_training_end=None if last_training_end is None else _at(last_training_end),
                    challenger=None if challenger is None else challenger.name,
                    drift=drift,
                ),
                rules,
            )
            if want.due:
                unseen = unseen_rows(fit_end=_at(production.fit_end), newest=_at(hour), rules=rules)
                log.trainings.append(
                    (
                        hour,
                        -1 if unseen is None else unseen,
                        None if challenger is None else challenger.name,
                        want.requested_by,
                    )
                )
                training = (hour, hour + TRAINING_HOURS)
        log.ages.append((hour, _age(production, hour)))
    return log


def _age(version: Version, hour: int) -> float:
    through = version.validated_through
    return model_age_hours(
        newest=_at(hour),
        data_end=_at(version.data_end),
        validated_through=None if through is None else _at(through),
    )


def test_with_the_default_settings_production_stays_fresh_and_no_training_is_wasted() -> None:
    settings = Settings(_env_file=None)
    log = simulate(settings)
    max_age = settings.model_max_age_hours

    promotions = [d for d in log.decisions if d[1] == policy.PROMOTE]
    assert len(promotions) >= 15, log.decisions  # the lifecycle turns
    assert len(log.trainings) >= len(log.decisions)
    # No version is stale when live evidence promotes it, nor after any decision.
    for hour, action, age in log.decisions:
        assert not model_stale(age, max_age_hours=max_age), (hour, action, age)
    # Production is never stale in steady state (from the first promotion on).
    first = promotions[0][0]
    steady = [(hour, age) for hour, age in log.ages if hour >= first]
    worst = max(age for _, age in steady)
    assert not model_stale(worst, max_age_hours=max_age), worst
    # No training starts that the gate must reject for too few unseen rows, nor while a
    # challenger is being decided.
    for hour, unseen, challenger, _ in log.trainings:
        assert unseen >= settings.gate_min_rows, (hour, unseen)
        assert challenger is None, hour
    # Null data: versions as good as the drift baseline never raise a drift alarm.
    assert log.alarms == []
    assert all(by != DRIFT for *_, by in log.trainings)


def test_drift_retrains_a_version_gone_wrong_but_never_supersedes_a_challenger() -> None:
    # Retraining on a month's cadence leaves hours with no challenger, where drift is the cause.
    settings = Settings(_env_file=None, ML_RETRAIN_INTERVAL_HOURS="720")
    log = simulate(settings, wrong_from=1_500)

    assert log.alarms, "a version sure of the wrong direction must raise a drift alarm"
    assert all(hour >= 1_500 for hour, _ in log.alarms)
    drift_trainings = [t for t in log.trainings if t[3] == DRIFT]
    assert drift_trainings
    for hour, unseen, challenger, _ in log.trainings:
        assert challenger is None, hour  # drift too waits while a challenger is decided
        assert unseen >= settings.gate_min_rows, (hour, unseen)
