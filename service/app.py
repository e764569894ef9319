"""The FastAPI application: `create_app(settings)`; its lifespan opens and closes everything.

Start-up: migrate the service database (alembic), serve the last known production models from
the local copy at once (or wait for the registry when there is none), start the registry poll,
the outcome filler and, unless this is a replica that only enqueues, the training scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from pipelines.db import migrate
from pipelines.settings import Settings, get_settings
from service.errors import install_error_handlers
from service.metrics import BodyLimitMiddleware, LatencyMiddleware, Metrics
from service.routes import features, health, metrics, models, predictions, storage, training
from service.state import ServiceState

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def start_service(settings: Settings) -> ServiceState:
    """Everything the lifespan opens, in order (blocking; run it off the event loop)."""
    migrate(settings)
    state = ServiceState.build(settings)
    try:
        _start(state)
    except BaseException:
        stop_service(state)
        raise
    logger.info(
        "serving %d production model(s) for %s; scheduler %s",
        len(state.models.all()),
        ", ".join(settings.pairs),
        "in this process" if settings.run_scheduler else "elsewhere (tbml worker)",
    )
    return state


def _start(state: ServiceState) -> None:
    settings = state.settings
    state.history_writer.start()
    if state.models.load_local() < len(state.models.slots):
        # Nothing (or not everything) to serve yet: ask the registry before the first request.
        state.models.refresh()
    else:
        state.models.trigger()
    state.models.start(interval_s=settings.model_refresh_interval_ms / 1000)
    state.predictor.warm()
    if settings.run_scheduler:
        from pipelines.queue.runtime import TrainingScheduler

        scheduler = TrainingScheduler(settings)
        scheduler.on_training_finished(lambda _job: state.models.trigger())
        state.scheduler = scheduler.start()
        state.queue = scheduler.queue
    else:
        from pipelines.queue.api import TrainingQueue

        state.queue = TrainingQueue(settings)
    state.every(
        settings.outcome_fill_interval_ms / 1000,
        "outcome-filler",
        lambda: state.history.fill_outcomes(store=state.store, timeframe=settings.timeframe),
    )


def stop_service(state: ServiceState) -> None:
    """Close what `start_service` opened, newest first; the pending history rows are stored."""
    state.stop_background()
    if state.scheduler is not None:
        state.scheduler.shutdown()
    state.models.stop()
    state.history_writer.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; nothing is opened until its lifespan starts."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await run_in_threadpool(start_service, settings)
        app.state.service = state
        try:
            yield
        finally:
            app.state.service = None
            await run_in_threadpool(stop_service, state)

    app = FastAPI(
        title="trading-bot-ml",
        version=VERSION,
        summary="Crypto direction predictions from MLflow-registered LSTM models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = None
    meters = Metrics(lambda: app.state.service)
    app.state.metrics = meters
    install_error_handlers(app)
    for module in (health, predictions, features, training, models, storage, metrics):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(LatencyMiddleware, metrics=meters)
    return app
