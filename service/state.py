"""What one API process holds while it runs, built and torn down by the app's lifespan.

Its periodic chores (database check and migration, model refresh, outcome filler, retention)
run on one `pipelines.periodic.Chores`; the history writer's thread reports into it, so health
sees every piece of background work in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import text

from pipelines.candles.store import CandleStore
from pipelines.db import migrate, read_session
from pipelines.lifecycle.retraining import Production
from pipelines.periodic import Chores, ChoreStatus
from pipelines.settings import Settings
from service.caches import TTLCache
from service.candles import ServingCandleStore
from service.challenger import ChallengerPolicy
from service.history.store import PredictionHistory
from service.history.writer import HistoryWriter
from service.live import WATCH_CHORE, CandleWatcher, PredictionHub
from service.model_cache import ModelCache
from service.predictor import Predictor, model_data_end, model_fit_end, model_validated_through

logger = logging.getLogger(__name__)

DATABASE_CHORE = "database"
HISTORY_WRITER = "history-writer"
DATABASE_CHECK_S = 5.0


@dataclass
class ServiceState:
    """The process's stores, caches, models and (optionally) its training scheduler."""

    settings: Settings
    store: CandleStore
    models: ModelCache
    history: PredictionHistory
    history_writer: HistoryWriter
    predictor: Predictor
    prediction_cache: TTLCache[dict[str, Any]]
    feature_cache: TTLCache[np.ndarray]
    feature_view_cache: TTLCache[dict[str, Any]]
    model_status_cache: TTLCache[dict[str, Any]]
    queue: Any  # pipelines.queue.api.TrainingQueue (imported lazily: it pulls in MLflow)
    scheduler: Any = None  # pipelines.queue.runtime.TrainingScheduler when run in-process
    started_at: float = field(default_factory=time.time)
    # The slow part of `/api/storage/stats` (service.storage), kept for a while.
    slow_stats: dict[str, Any] = field(default_factory=dict)
    slow_stats_at: float = 0.0
    chores: Chores = field(default_factory=Chores)
    migrated: bool = False
    hub: PredictionHub | None = None
    watcher: CandleWatcher | None = None
    # The market's clock minus ours, as the feed last measured it (feed-status.json).
    clock_offset_ms: int = 0
    # The last drift check per served (pair, model type), as health shows it (`check_drift`).
    drift: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # Champion and challenger on live candles (`service.challenger`), set by `build`.
    challengers: ChallengerPolicy | None = None

    @classmethod
    def build(cls, settings: Settings) -> ServiceState:
        """The stores and caches of `settings`; nothing is started yet."""
        store = ServingCandleStore(
            bundled_dir=settings.bundled_data_dir,
            data_dir=settings.data_dir,
            quote=settings.quote_currency,
            exchange=settings.exchange,
        )
        models = ModelCache(
            tracking_uri=settings.tracking_uri,
            cache_dir=settings.data_dir / "model-cache",
            slots=[(p, m) for p in settings.pairs for m in settings.enabled_models],
        )
        history = PredictionHistory(url=settings.database_url)
        chores = Chores()
        writer = HistoryWriter(
            store=history.record,
            on_outcome=lambda error, retry_s: chores.record(
                HISTORY_WRITER, error, next_retry_s=retry_s
            ),
        )
        prediction_cache: TTLCache[dict[str, Any]] = TTLCache(
            name="predictions", ttl_ms=settings.prediction_cache_ttl_ms
        )
        feature_cache: TTLCache[np.ndarray] = TTLCache(
            name="features", ttl_ms=settings.feature_cache_ttl_ms
        )
        predictor = Predictor(
            settings=settings,
            store=store,
            models=models,
            prediction_cache=prediction_cache,
            feature_cache=feature_cache,
            record=writer.submit,
        )
        state = cls(
            settings=settings,
            store=store,
            models=models,
            history=history,
            history_writer=writer,
            predictor=predictor,
            prediction_cache=prediction_cache,
            feature_cache=feature_cache,
            feature_view_cache=TTLCache(name="feature-views", ttl_ms=settings.feature_cache_ttl_ms),
            model_status_cache=TTLCache(
                name="modelStatus", ttl_ms=settings.model_status_cache_ttl_ms
            ),
            queue=None,
            chores=chores,
            hub=PredictionHub(max_connections=settings.ws_max_connections),
        )
        predictor.market_now_ms = state.market_now_ms
        state.challengers = ChallengerPolicy(settings=settings, history=history, models=models)
        state.watcher = CandleWatcher(
            pairs=settings.pairs,
            load=lambda pair: store.load(pair, settings.timeframe),
            model_types=lambda pair: [(m.model_type, m.version) for m in models.models_of(pair)],
            predict=lambda pair, model_type, alias: predictor.predict(
                pair=pair, model_type=model_type, ensemble=False, alias=alias
            ),
            predict_past=lambda pair, model_type, candles, alias: predictor.predict_past(
                pair=pair, model_type=model_type, candles=candles, alias=alias
            ),
            publish=state.publish,
            challengers=lambda pair: [
                (m.model_type, m.version) for m in models.challengers() if m.pair == pair
            ],
        )
        return state

    def market_now_ms(self) -> int:
        """Now by the market's clock (ours when no feed has measured the exchange's)."""
        return int(time.time() * 1000) + self.clock_offset_ms

    def publish(self, body: dict[str, Any]) -> None:
        """Push a newly computed prediction to the WebSocket subscribers."""
        if self.hub is not None:
            self.hub.publish(body)

    def watch_candles(self) -> None:
        """The candle-watch chore: read the market clock offset, then look for new candles."""
        from pipelines.candles.feed import read_feed_status

        entries = [e for e in read_feed_status(self.settings).values() if e.get("lastSuccess")]
        if entries:
            freshest = max(entries, key=lambda e: int(e["lastSuccess"]))
            if freshest.get("clockOffsetMs") is not None:
                self.clock_offset_ms = int(freshest["clockOffsetMs"])
        if self.watcher is not None:
            self.watcher.check()

    def production_data_end(self, pair: str, model_type: str) -> Production | None:
        """What the retraining trigger needs of a slot's served production version: its data
        end, the last candle whose outcome it learnt (`fit_end`) and the last candle live
        candles validated it through, read from the loaded bundle and its tags (no registry
        call, no MLflow import); None without one, or when its data end is unknown."""
        model = self.models.get(pair, model_type)
        if model is None:
            return None
        end = model_data_end(model)
        if end is None:
            return None
        return Production(
            version=model.version,
            data_end=end,
            fit_end=model_fit_end(model),
            validated_through=model_validated_through(model),
        )

    def challenger_of(self, pair: str, model_type: str) -> str | None:
        """The slot's loaded challenger version (for the retraining policy: a slot with one
        waits for live candles to decide)."""
        model = self.models.challenger(pair, model_type)
        return None if model is None else model.version

    def check_drift(self) -> None:
        """The drift chore: the sequential drift test (`pipelines.lifecycle.drift`) of each
        production version on its realised rows against the base rate, scored by the live
        scorer; health shows each state. On an alarm not acted on yet, the retraining trigger
        (`pipelines.lifecycle.retraining.trigger`, with `drift` the reason) decides, and a
        training is queued only when it says due: a challenger being decided is never
        superseded, and the trigger is asked again at the next look until it is due."""
        import pandas as pd

        from pipelines.candles.store import CandlesNotFoundError
        from pipelines.candles.timeframes import timeframe_delta
        from pipelines.lifecycle import drift, live, retraining
        from pipelines.queue.errors import QueueError
        from pipelines.queue.policy import last_training_end

        settings = self.settings
        rule = drift.DriftRule(
            reference=settings.drift_reference,
            threshold=settings.drift_threshold,
            warmup=settings.drift_warmup,
        )
        realised: dict[str, list[live.RealisedRows]] = {}
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for model in self.models.all():
            pair, kind = model.pair, model.model_type
            if pair not in realised:
                realised[pair] = self.history.realised_rows(pair=pair)
            rows = next(
                (
                    r
                    for r in realised[pair]
                    if (r.model_type, r.model_version) == (kind, model.version)
                ),
                None,
            )
            if rows is None:
                continue
            try:
                candles = self.store.load(pair, settings.timeframe)
            except CandlesNotFoundError:
                continue
            figures = live.score(rows, candles)
            if figures is None:
                continue
            times, differences = figures.differences(drift.BASELINE)
            state = drift.drift_state(differences, rule)
            verdict = figures.baselines[drift.BASELINE].versus
            alarm = None if state.last_alarm is None else int(times[state.last_alarm])
            entry: dict[str, Any] = {
                "pair": pair,
                "modelType": kind,
                "version": model.version,
                "rows": state.rows,
                "modelLogLoss": figures.log_loss.value,
                "baselines": {drift.BASELINE: figures.baselines[drift.BASELINE].log_loss},
                "bestBaseline": drift.BASELINE,
                "interval": [verdict.low, verdict.high],
                "drifting": state.drifting,
                "statistic": state.statistic,
                "threshold": rule.threshold,
                "reference": rule.reference,
                "warmingUp": state.warming_up,
                "alarms": len(state.alarms),
                "lastAlarm": alarm,
            }
            found[(pair, kind)] = entry
            previous = self.drift.get((pair, kind)) or {}
            acted = previous.get("version") == model.version and previous.get("queuedFor") == alarm
            if alarm is None or acted:
                if acted:
                    entry["queuedFor"] = alarm
                continue
            if not settings.retrain_policy or self.queue is None:
                continue
            when = pd.Timestamp(alarm, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%MZ")
            why = (
                f"production version {model.version} drifts: the CUSUM of its per-row log loss "
                f"minus the base rate's crossed {rule.threshold:g} sd at the candle of {when} "
                f"({state.rows} realised rows, mean difference {state.mean:+.4f} nats)"
            )
            challenger = self.models.challenger(pair, kind)
            # The facts the retraining policy's chore gathers (and `tbml backtest`), so a drift
            # alarm never trains on data a training already used, and ties are no gate rows.
            closes = candles["close"]
            if pd.DatetimeIndex(closes.index).tz is None:
                closes = closes.tz_localize("UTC")  # a new series: the store's frame is shared
            decision = retraining.trigger(
                retraining.Facts(
                    name=f"{pair}-{kind}",
                    newest=pd.Timestamp(candles.index[-1]),
                    production=self.production_data_end(pair, kind),
                    last_training_end=last_training_end(settings.database_url, pair, kind),
                    challenger=None if challenger is None else challenger.version,
                    drift=why,
                    closes=closes,
                ),
                retraining.Rules(
                    interval_hours=settings.retrain_interval_for(pair),
                    max_age_hours=settings.model_max_age_hours,
                    gate_min_rows=settings.gate_min_rows,
                    horizon=model.bundle.horizon,
                    timeframe=pd.Timedelta(timeframe_delta(settings.timeframe)),
                ),
            )
            entry["decision"] = decision.reason
            if not decision.due:
                logger.info("drift alarm, no training: %s", decision.reason)
                continue
            try:
                job = self.queue.enqueue(
                    pair=pair,
                    model_type=kind,
                    requested_by=decision.requested_by,
                    reason=decision.reason,
                    priority=decision.priority,
                )
                logger.warning("%s; queued %s", decision.reason, job.job_id)
                entry["queuedFor"] = alarm
            except QueueError as error:
                logger.info("%s; not queued: %s", decision.reason, error)
        self.drift = found

    def candles_arrived(self, *_args: object) -> None:
        """The feed appended candles in this process: look at once (returns at once)."""
        self.chores.trigger(WATCH_CHORE)

    def cache_hits(self) -> dict[str, int]:
        """Hits per cache, named as in the original's health answer."""
        return {
            "predictions": self.prediction_cache.hits,
            "features": self.feature_cache.hits + self.feature_view_cache.hits,
            "modelStatus": self.model_status_cache.hits,
        }

    def cache_misses(self) -> dict[str, int]:
        """Misses per cache, named as `cache_hits`."""
        return {
            "predictions": self.prediction_cache.misses,
            "features": self.feature_cache.misses + self.feature_view_cache.misses,
            "modelStatus": self.model_status_cache.misses,
        }

    def every(self, interval_s: float, name: str, action: Callable[[], object]) -> None:
        """Run `action()` every `interval_s` as the chore `name` (survives its failures)."""
        self.chores.add(name, action, interval_s=interval_s)

    def check_database(self) -> None:
        """The database chore: migrate once it is reachable (a start while it was down), then
        check it answers; raises while it does not (health: `database` down)."""
        if not self.migrated:
            migrate(self.settings)
            self.migrated = True
            logger.info("service database reachable and migrated")
        self.ping_database()

    def ping_database(self) -> None:
        """One `SELECT 1`; raises when the database does not answer."""
        with read_session(self.settings.database_url) as session:
            session.execute(text("SELECT 1"))

    def start_background(self) -> None:
        """Start the chores (the database check first, every `DATABASE_CHECK_S`)."""
        self.chores.add(DATABASE_CHORE, self.check_database, interval_s=DATABASE_CHECK_S)
        self.chores.start()

    def background(self) -> dict[str, ChoreStatus]:
        """Every chore's state: this process's, and the in-process scheduler's (lease...)."""
        statuses = self.chores.statuses()
        if self.scheduler is not None:
            statuses.update(self.scheduler.background())
        return statuses

    def stop_background(self) -> None:
        """Stop the chores (a running one finishes first)."""
        self.chores.shutdown()
