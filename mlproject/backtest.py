"""`tbml backtest`: the whole lifecycle replayed over past candles on a simulated clock.

What the service would have done, hour by hour, for one pair and one model type (`replay`):

1. **Bootstrap**: with no version yet, one is trained on the candles known at the first hour
   (as `tbml up` does on an empty registry); the gate makes it production.
2. **Every hour** (the candle that just closed): the production version (and a challenger, in
   shadow) predicts it; the answer is `pipelines.lifecycle.signal.served_signal` of production's
   probability, its proof, its magnitude forecast and its age (`staleness`); the outcomes of
   earlier candles are realised.
3. **The challenger policy** (`pipelines.lifecycle.challenger.decide`) on both versions' realised
   rows: promote (production is validated through the last compared candle), retire, or wait.
4. **Drift** (`pipelines.lifecycle.drift`) of production's realised rows against the base rate,
   scored by the live scorer (`pipelines.lifecycle.live.score`), as the service's drift chore.
5. **The retraining trigger** (`pipelines.lifecycle.retraining.trigger`) with the facts the
   policy chore gathers; when due, a real training of the model type (`mlproject.train.train`,
   in-process, as an MLflow child run) on the candles known at that hour (`TrainConfig.until`),
   then the offline gate (`mlproject.gate.judge`, the same scoring and `decide` the entry point
   runs, with no registry write): rejected, challenger, or production.

Every decision is the function the service calls; this module only gathers their inputs on the
simulated clock and keeps the aliases in memory. What it does not simulate: a training's
duration (it ends before the next candle; its version predicts from the candle it ended on, as
the watcher predicts the newest candle for a newly served version), the queue's cooldowns (one
training per hour at most, which the trigger's interval already bounds), and the feed's delays
(each candle is known at its close). Features are computed once over the candles and read
causally: the features of a candle equal those the service computes from its tail
(`latest_features`).

`Replay` holds everything that happened; `mlproject.backtest_report` turns it into figures, plots,
a markdown report and the MLflow runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlproject.config import TrainConfig
from pipelines.candles.timeframes import timeframe_delta
from pipelines.features.compute import compute_features
from pipelines.lifecycle import challenger as challenger_policy
from pipelines.lifecycle import drift, live, retraining
from pipelines.lifecycle.proof import PROVEN, UNPROVEN, proof_of
from pipelines.lifecycle.scores import decided, outcomes
from pipelines.lifecycle.signal import NO_MODEL, Signal, served_signal
from pipelines.lifecycle.staleness import model_age_hours, model_stale
from pipelines.modelbundle import ModelBundle
from pipelines.settings import Settings

logger = logging.getLogger(__name__)

BOOTSTRAP = "bootstrap"
CHUNK = 1024  # windows predicted at once (bounds memory: CHUNK x 60 x 78 floats)


@dataclass
class Version:
    """One trained version of the replay and what became of it."""

    number: int
    trained_at: pd.Timestamp  # the newest candle its training read
    requested_by: str
    reason: str
    run_id: str | None
    bundle: ModelBundle | None
    data_end: pd.Timestamp
    fit_end: pd.Timestamp | None
    unproven: bool
    gate: str  # production, challenger or rejected
    gate_reason: str
    validated_through: pd.Timestamp | None = None
    since: pd.Timestamp | None = None  # when it became the challenger
    fate: str | None = None  # promoted / retired / replaced, with `fate_at`
    fate_at: pd.Timestamp | None = None
    fate_reason: str | None = None
    promoted_at: pd.Timestamp | None = None  # when the challenger policy promoted it
    # The live scorer's figures of every candle it predicted, in shadow and serving (`live`).
    live: live.LiveFigures | None = None
    proba: np.ndarray | None = None  # per replay hour (NaN before it existed)
    move: np.ndarray | None = None
    baseline: np.ndarray | None = None

    @property
    def name(self) -> str:
        return str(self.number)


@dataclass(frozen=True)
class Event:
    """One decision of the lifecycle, in the order they happened."""

    time: pd.Timestamp
    kind: str  # trained, admitted, promoted, retired, rejected, production, drift
    version: str | None
    reason: str


@dataclass
class Replay:
    """What the service would have done over the replayed hours of one pair."""

    pair: str
    model_type: str
    hours: pd.DatetimeIndex
    closes: np.ndarray  # close of each replay hour
    next_return: np.ndarray  # close of the next candle / close - 1 (NaN for the last)
    outcome: np.ndarray  # 1 up, 0 down, NaN tie or unknown, of each hour's candle
    probability: np.ndarray  # production's p(up), NaN without production
    move: np.ndarray  # production's magnitude forecast, NaN without one
    serving: list[str | None]  # production version per hour
    signals: list[Signal]  # the answer with the move gate as configured
    signals_without_gate: list[Signal]  # the same lifecycle, the move gate off
    versions: list[Version]
    events: list[Event]
    settings_used: dict[str, Any]

    def decisions(self) -> list[tuple[str, str, str | None]]:
        """The decision sequence: (time, kind, version) of every event, for comparisons."""
        return [(e.time.isoformat(), e.kind, e.version) for e in self.events]


TrainFn = Callable[[TrainConfig, Settings], tuple[ModelBundle, str | None]]


def replay(
    *,
    pair: str,
    model_type: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    settings: Settings,
    candles: pd.DataFrame,
    train: TrainFn,
    overrides: dict[str, Any] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Replay:
    """Replay the lifecycle of `pair` / `model_type` over the candles from `start` to `end`.

    `candles`: the pair's candles with their reference closes (`mlproject.loading.load_candles`),
    reaching at least to `end` (and one candle past it for the last hour's return, if known).
    `train(config, settings)`: a training of `config` (its `until` set to the hour), returning
    the version's bundle and its MLflow run id.
    """
    return _Replayer(
        pair=pair,
        model_type=model_type,
        start=start,
        end=end,
        settings=settings,
        candles=candles,
        train=train,
        overrides=overrides or {},
        on_event=on_event,
    ).run()


class _Replayer:
    def __init__(
        self,
        *,
        pair: str,
        model_type: str,
        start: pd.Timestamp,
        end: pd.Timestamp,
        settings: Settings,
        candles: pd.DataFrame,
        train: TrainFn,
        overrides: dict[str, Any],
        on_event: Callable[[Event], None] | None,
    ) -> None:
        index = pd.DatetimeIndex(candles.index)
        self.pair, self.model_type, self.settings = pair, model_type, settings
        self.candles = candles
        self.train_fn, self.overrides, self.on_event = train, overrides, on_event
        self.hours = pd.DatetimeIndex(index[(index >= start) & (index <= end)])
        if len(self.hours) < 2:
            raise ValueError(
                f"the candles of {pair} hold {len(self.hours)} hours between {start} and {end}: "
                f"a backtest needs at least 2 (the candles span {index[0]} .. {index[-1]})"
            )
        self.first = int(index.searchsorted(self.hours[0]))
        self.step = pd.Timedelta(timeframe_delta(settings.timeframe))
        self.horizon = settings.horizon
        close = candles["close"].to_numpy(dtype=np.float64)
        self.close_all = close
        self.closes = candles["close"]
        n = len(self.hours)
        at = self.first + np.arange(n)
        ahead = at + self.horizon
        future = np.where(ahead < close.size, close[np.minimum(ahead, close.size - 1)], np.nan)
        self.outcome = outcomes(close[at], future)
        nxt = at + 1
        self.next_return = np.where(
            nxt < close.size, close[np.minimum(nxt, close.size - 1)] / close[at] - 1.0, np.nan
        )
        self.times_ms = self.hours.as_unit("ms").asi8
        self.rules = settings.signal_rules()
        self.ungated = replace(self.rules, move_gate=False)
        self.versions: list[Version] = []
        self.events: list[Event] = []
        self.production: Version | None = None
        self.challenger: Version | None = None
        self.last_training_end: pd.Timestamp | None = None
        self.drift_acted: dict[str, int] = {}  # version -> the alarm (row) acted on
        self.drift_seen: dict[str, int] = {}  # version -> the alarm (row) recorded as an event
        self.features: dict[str, np.ndarray] = {}
        self.drift_rule = drift.DriftRule(
            reference=settings.drift_reference,
            threshold=settings.drift_threshold,
            warmup=settings.drift_warmup,
        )
        self.trigger_rules = retraining.Rules(
            interval_hours=settings.retrain_interval_for(pair),
            max_age_hours=settings.model_max_age_hours,
            gate_min_rows=settings.gate_min_rows,
            horizon=self.horizon,
            timeframe=self.step,
        )
        self.challenger_rules = challenger_policy.Rules(
            min_outcomes=settings.challenger_min_outcomes,
            max_hours=settings.challenger_max_hours,
            margin=settings.promotion_margin,
        )

    # --- the clock -------------------------------------------------------------------------

    def run(self) -> Replay:
        n = len(self.hours)
        probability = np.full(n, np.nan)
        move = np.full(n, np.nan)
        serving: list[str | None] = [None] * n
        signals: list[Signal] = []
        ungated: list[Signal] = []
        self._train(0, BOOTSTRAP, "no production version: bootstrap (as tbml up does)")
        for i, hour in enumerate(self.hours):
            prod = self.production
            if prod is None or prod.proba is None or not np.isfinite(prod.proba[i]):
                held = Signal(signal="HOLD", raw="HOLD", held_by=(NO_MODEL,))
                signals.append(held)
                ungated.append(held)
            else:
                p = float(prod.proba[i])
                m = (
                    None
                    if prod.move is None or not np.isfinite(prod.move[i])
                    else float(prod.move[i])
                )
                age = model_age_hours(
                    newest=hour, data_end=prod.data_end, validated_through=prod.validated_through
                )
                stale = model_stale(age, max_age_hours=self.settings.model_max_age_hours)
                for rules, into in ((self.rules, signals), (self.ungated, ungated)):
                    into.append(
                        served_signal(
                            p, rules=rules, unproven=prod.unproven, move=m, stale_model=stale
                        )
                    )
                probability[i], serving[i] = p, prod.name
                move[i] = np.nan if m is None else m
            self._challenger_policy(i)
            drift_reason = self._drift(i)
            self._retraining(i, drift_reason)
        for version in self.versions:  # each against the naive baselines, as the service shows
            rows = self._realised(version, n - 1)
            version.live = None if rows is None else live.score(rows, self.candles)
        return Replay(
            pair=self.pair,
            model_type=self.model_type,
            hours=self.hours,
            closes=self.close_all[self.first : self.first + n],
            next_return=self.next_return,
            outcome=self.outcome,
            probability=probability,
            move=move,
            serving=serving,
            signals=signals,
            signals_without_gate=ungated,
            versions=self.versions,
            events=self.events,
            settings_used=self._settings_used(),
        )

    # --- the chores ------------------------------------------------------------------------

    def _challenger_policy(self, i: int) -> None:
        prod, new = self.production, self.challenger
        if prod is None or new is None or new.since is None:
            return
        hour = self.hours[i]
        decision = challenger_policy.decide(
            challenger=self._realised(new, i),
            production=self._realised(prod, i),
            challenger_proof=UNPROVEN if new.unproven else PROVEN,
            production_proof=UNPROVEN if prod.unproven else PROVEN,
            hours=(hour - new.since) / pd.Timedelta(hours=1),
            rules=self.challenger_rules,
            production_version=prod.name,
        )
        if decision.action == challenger_policy.WAITING:
            return
        through = (
            None
            if decision.last_candle_ms is None
            else pd.Timestamp(decision.last_candle_ms, unit="ms", tz="UTC")
        )
        self.challenger = None
        if decision.action == challenger_policy.PROMOTE:
            self._end_serving(prod, hour)
            prod.fate, prod.fate_at = "replaced", hour
            new.fate, new.fate_at, new.fate_reason = "promoted", hour, decision.reason
            new.promoted_at = hour
            new.validated_through = through
            self.production = new
            self._event(hour, "promoted", new.name, decision.reason)
        else:
            new.fate, new.fate_at, new.fate_reason = "retired", hour, decision.reason
            self._end_serving(new, hour)
            if through is not None:
                prod.validated_through = max(prod.validated_through or through, through)
            self._event(hour, "retired", new.name, decision.reason)

    def _drift(self, i: int) -> tuple[str, int] | None:
        """Why production drifts and the alarm's row, when its test alarmed on a row not acted
        on yet."""
        prod = self.production
        if prod is None:
            return None
        rows = self._realised(prod, i)
        if rows is None or rows.candle_time.size <= self.drift_rule.warmup:
            return None
        figures = live.score(rows, self.candles.iloc[: self.first + i + 1])
        if figures is None:
            return None
        times, differences = figures.differences(drift.BASELINE)
        state = drift.drift_state(differences, self.drift_rule)
        if state.last_alarm is None or self.drift_acted.get(prod.name) == state.last_alarm:
            return None
        when = pd.Timestamp(int(times[state.last_alarm]), unit="ms", tz="UTC")
        return (
            f"production version {prod.name} drifts: the CUSUM of its per-row log loss minus the "
            f"base rate's crossed {self.drift_rule.threshold:g} sd at the candle of "
            f"{when:%Y-%m-%dT%H:%MZ} ({state.rows} realised rows, mean difference "
            f"{state.mean:+.4f} nats)"
        ), state.last_alarm

    def _retraining(self, i: int, drift_found: tuple[str, int] | None) -> None:
        hour = self.hours[i]
        prod = self.production
        drift_reason, alarm = drift_found if drift_found is not None else (None, -1)
        facts = retraining.Facts(
            name=f"{self.pair}-{self.model_type}",
            newest=hour,
            production=None
            if prod is None
            else retraining.Production(
                version=prod.name,
                data_end=prod.data_end,
                fit_end=prod.fit_end,
                validated_through=prod.validated_through,
            ),
            last_training_end=self.last_training_end,
            challenger=None if self.challenger is None else self.challenger.name,
            drift=drift_reason,
            closes=self.closes.iloc[: self.first + i + 1],
        )
        want = retraining.trigger(facts, self.trigger_rules)
        if drift_reason is not None and prod is not None:
            if self.drift_seen.get(prod.name) != alarm:  # one event per alarm, however long
                self.drift_seen[prod.name] = alarm  # it waits for a training to be due
                self._event(hour, "drift", prod.name, drift_reason)
            if want.due:
                self.drift_acted[prod.name] = alarm
        if not want.due or want.requested_by is None:
            return
        self._train(i, want.requested_by, want.reason)

    # --- a training and its gate -----------------------------------------------------------

    def _train(self, i: int, requested_by: str, reason: str) -> None:
        hour = self.hours[i]
        config = TrainConfig.from_settings(
            self.settings,
            pair=self.pair,
            model_type=self.model_type,
            until=hour.isoformat(),
            register=False,
            promote=False,
            **self.overrides,
        )
        number = len(self.versions) + 1
        self._event(hour, "trained", str(number), f"{requested_by}: {reason}")
        self.last_training_end = hour
        bundle, run_id = self.train_fn(config, self.settings)
        from mlproject.gate import judge

        known = self.candles.iloc[: self.first + i + 1]
        prod = self.production
        decision = judge(
            version=str(number),
            challenger=bundle,
            production=None if prod is None or prod.bundle is None else (prod.name, prod.bundle),
            candles=known,
            settings=self.settings,
        )
        metadata = bundle.metadata
        version = Version(
            number=number,
            trained_at=hour,
            requested_by=requested_by,
            reason=reason,
            run_id=run_id,
            bundle=bundle,
            data_end=_time(metadata.get("data_range", {}).get("end")) or hour,
            fit_end=_time(metadata.get("fit_end")),
            unproven=proof_of(metadata) == UNPROVEN,
            gate=decision.outcome if decision.outcome != "promoted" else "production",
            gate_reason=decision.reason,
        )
        self.versions.append(version)
        if not decision.promoted:
            version.bundle = None  # never served: free it
            self._event(hour, "rejected", version.name, decision.reason)
            return
        # The watcher predicts the newest candle with every newly served version (production or
        # challenger), so a version's first row is the candle its training ended on.
        self._predict(version, start=i)
        if decision.outcome == "challenger":
            if self.challenger is not None:
                old = self.challenger
                old.fate, old.fate_at = "replaced", hour
                self._end_serving(old, hour)
            version.since = hour
            self.challenger = version
            self._event(hour, "admitted", version.name, decision.reason)
            return
        if prod is not None:
            prod.fate, prod.fate_at = "replaced", hour
            self._end_serving(prod, hour)
        self.production = version
        self._event(hour, "production", version.name, decision.reason)

    def _predict(self, version: Version, *, start: int) -> None:
        """The version's probability (and magnitude, shipped baseline) for every replay hour
        from `start` on, from features computed once per feature set."""
        bundle = version.bundle
        assert bundle is not None
        n = len(self.hours)
        proba, move, base = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        features = self._features(bundle)
        length = bundle.sequence_length
        for lo in range(start, n, CHUNK):
            hi = min(n, lo + CHUNK)
            at = self.first + np.arange(lo, hi)
            windows = np.stack([features[p - length + 1 : p + 1] for p in at])
            proba[lo:hi] = bundle.predict_proba(windows)
            found = bundle.move_proba(windows)
            if found is not None:
                move[lo:hi] = found
            shipped = bundle.baseline_proba(windows)
            if shipped is not None:
                base[lo:hi] = shipped
        version.proba, version.move, version.baseline = proba, move, base

    def _features(self, bundle: ModelBundle) -> np.ndarray:
        key = f"{bundle.spec.version}:{','.join(bundle.spec.names)}"
        if key not in self.features:
            frame = compute_features(self.candles, spec=bundle.spec)
            self.features[key] = frame.to_numpy(dtype=np.float64)
        return self.features[key]

    # --- bookkeeping -----------------------------------------------------------------------

    def _realised(self, version: Version, i: int) -> live.RealisedRows | None:
        """The version's predictions whose outcome is known at hour `i` (up or down), as the
        history reads them."""
        if version.proba is None:
            return None
        last = i - self.horizon  # the newest candle whose outcome the close of hour i settles
        if last < 0:
            return None
        p = version.proba[: last + 1]
        y = self.outcome[: last + 1]
        keep = np.isfinite(p) & decided(y)
        if not keep.any():
            return None
        ties = int((np.isfinite(p) & ~np.isfinite(y)).sum())
        baseline = version.baseline[: last + 1][keep] if version.baseline is not None else None
        return live.RealisedRows(
            model_type=self.model_type,
            model_version=version.name,
            candle_time=self.times_ms[: last + 1][keep],
            probability=p[keep],
            outcome=y[keep].astype(np.int8),
            correct=((p[keep] >= 0.5) == (y[keep] == 1)),
            horizon=np.full(int(keep.sum()), self.horizon),
            baseline_probability=baseline,
            ties=ties,
        )

    def _end_serving(self, version: Version, hour: pd.Timestamp) -> None:
        """The version neither serves nor shadows after `hour`: it predicts no later hour, and
        its bundle (needed only to gate against it as production) is let go."""
        version.bundle = None
        if version.proba is not None:
            cut = int(self.hours.searchsorted(hour, side="right"))
            for values in (version.proba, version.move, version.baseline):
                if values is not None:
                    values[cut:] = np.nan

    def _event(self, time: pd.Timestamp, kind: str, version: str | None, reason: str) -> None:
        event = Event(time=time, kind=kind, version=version, reason=reason)
        self.events.append(event)
        logger.info(
            "%s %s %s%s: %s", time, self.pair, kind, f" v{version}" if version else "", reason
        )
        if self.on_event is not None:
            self.on_event(event)

    def _settings_used(self) -> dict[str, Any]:
        s = self.settings
        return {
            "retrain_interval_hours": s.retrain_interval_for(self.pair),
            "model_max_age_hours": s.model_max_age_hours,
            "gate_min_rows": s.gate_min_rows,
            "challenger_min_outcomes": s.challenger_min_outcomes,
            "challenger_max_hours": s.challenger_max_hours,
            "promotion": s.promotion_mode,
            "promotion_margin": s.promotion_margin,
            "buy_threshold": s.buy_threshold,
            "sell_threshold": s.sell_threshold,
            "serve_unproven": s.serve_unproven,
            "move_gate": s.move_gate,
            "move_threshold": s.move_threshold,
            "trading_fee": s.trading_fee,
            "horizon": s.horizon,
            "timeframe": s.timeframe,
            **{f"train_{k}": v for k, v in self.overrides.items()},
        }


def _value(values: np.ndarray | None, i: int) -> float | None:
    if values is None or not np.isfinite(values[i]):
        return None
    return float(values[i])


def _time(value: object) -> pd.Timestamp | None:
    if value in (None, ""):
        return None
    moment = pd.Timestamp(value)  # type: ignore[arg-type]
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


# --- trainings through the real training code --------------------------------------------


@contextmanager
def _run_env(run_id: str) -> Iterator[None]:
    """MLFLOW_RUN_ID set to `run_id` for the block (the training resumes that run)."""
    before = os.environ.get("MLFLOW_RUN_ID")
    os.environ["MLFLOW_RUN_ID"] = run_id
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_RUN_ID", None)
        else:
            os.environ["MLFLOW_RUN_ID"] = before


def mlflow_trainer(*, parent_run_id: str, experiment_id: str, workdir: Path) -> TrainFn:
    """Trainings in-process through `mlproject.train.train`, each an MLflow child run of the
    backtest's run (it logs what every training logs; nothing is registered), its bundle read
    back from the run's logged model."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from mlproject.train import train
    from pipelines.modelbundle import PYFUNC_ARTIFACTS_DIR, logged_model_id

    def trained(config: TrainConfig, settings: Settings) -> tuple[ModelBundle, str | None]:
        client = MlflowClient(tracking_uri=settings.tracking_uri)
        run = client.create_run(
            experiment_id,
            run_name=f"{config.pair}-{config.model_type} as of {config.until}",
            tags={"mlflow.parentRunId": parent_run_id, "tbml.backtest": parent_run_id},
        )
        run_id = run.info.run_id
        with _run_env(run_id):
            outcome = train(config, settings=settings)
        model_id = logged_model_id(outcome.model_uri, outcome.model_id)
        if model_id is None:
            raise RuntimeError(f"training run {run_id} logged no model ({outcome.model_uri!r})")
        location = client.get_logged_model(model_id).artifact_location.rstrip("/")
        dst = workdir / run_id
        dst.mkdir(parents=True, exist_ok=True)
        local = download_artifacts(
            artifact_uri=f"{location}/{PYFUNC_ARTIFACTS_DIR}",
            dst_path=str(dst),
            tracking_uri=settings.tracking_uri,
        )
        return ModelBundle.load(Path(local)), run_id

    return trained
