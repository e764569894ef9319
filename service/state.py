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
from pipelines.periodic import Chores, ChoreStatus
from pipelines.settings import Settings
from service.caches import TTLCache
from service.candles import ServingCandleStore
from service.history.store import PredictionHistory
from service.history.writer import HistoryWriter
from service.model_cache import ModelCache
from service.predictor import Predictor

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
        return cls(
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
        )

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
