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
import pandas as pd
from sqlalchemy import text

from pipelines.candles.store import CandleStore
from pipelines.db import migrate, read_session
from pipelines.periodic import Chores, ChoreStatus
from pipelines.settings import Settings
from service.caches import TTLCache
from service.candles import ServingCandleStore
from service.challenger import ChallengerPolicy
from service.history.store import PredictionHistory
from service.history.writer import HistoryWriter
from service.live import WATCH_CHORE, CandleWatcher, PredictionHub
from service.model_cache import ModelCache
from service.predictor import Predictor, model_data_end

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
    # The last drift check per served (pair, model type): `service.drift.DriftResult.to_dict()`.
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

    def production_data_end(self, pair: str, model_type: str) -> tuple[str, pd.Timestamp] | None:
        """The served production version of a slot and where its training data ends (for the
        retraining policy, read from the loaded bundle: no registry call, no MLflow import)."""
        model = self.models.get(pair, model_type)
        if model is None:
            return None
        end = model_data_end(model)
        return None if end is None else (model.version, end)

    def challenger_of(self, pair: str, model_type: str) -> str | None:
        """The slot's loaded challenger version (for the retraining policy: a slot with one
        waits for live candles to decide)."""
        model = self.models.challenger(pair, model_type)
        return None if model is None else model.version

    def check_drift(self) -> None:
        """The drift chore: is a production version's live log loss over its last
        ML_DRIFT_WINDOW outcomes significantly worse than the best naive baseline on the same
        candles (paired block bootstrap)? Then health says so and a retraining is queued
        (`requestedBy: drift`), once: the queue refuses a second active job for the slot."""
        from pipelines.queue.errors import QueueError
        from service.drift import DriftCheck

        check = DriftCheck(
            self.history,
            self.store,
            timeframe=self.settings.timeframe,
            window=self.settings.drift_window,
            margin=max(0.0, self.settings.promotion_margin),
        )
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for model in self.models.all():
            result = check.check(model.pair, model.model_type, model.version, model.bundle.horizon)
            if result is None:
                continue
            found[(model.pair, model.model_type)] = result.to_dict()
            if not result.drifting or not self.settings.retrain_policy or self.queue is None:
                continue
            verdict = result.verdict
            reason = (
                f"{model.pair}-{model.model_type} version {model.version} drifts: its live log "
                f"loss over the last {result.rows} outcomes is {result.model_log_loss:.4f}, worse "
                f"than the {result.best_baseline} baseline's by {verdict.low:.4f} to "
                f"{verdict.high:.4f} (95 %, paired block bootstrap)"
            )
            try:
                job = self.queue.enqueue(
                    pair=model.pair,
                    model_type=model.model_type,
                    requested_by="drift",
                    reason=reason,
                )
                logger.warning("%s; queued %s", reason, job.job_id)
            except QueueError as error:
                logger.info("%s; not queued: %s", reason, error)
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
