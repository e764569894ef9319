"""What one API process holds while it runs, built and torn down by the app's lifespan."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.candles.store import CandleStore
from pipelines.settings import Settings
from service.caches import TTLCache
from service.candles import ServingCandleStore
from service.history.store import PredictionHistory
from service.history.writer import HistoryWriter
from service.model_cache import ModelCache
from service.predictor import Predictor

logger = logging.getLogger(__name__)


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
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

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
        writer = HistoryWriter(store=history.record)
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
        """Run `action()` every `interval_s` in a daemon thread until `stop_background()`."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    action()
                except Exception:  # a periodic chore must outlive one failure
                    logger.exception("%s failed", name)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop_background(self) -> None:
        """Stop the periodic chores started by `every`."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
