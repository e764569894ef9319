"""The FastAPI application: `create_app(settings)`; its lifespan opens and closes everything.

Start-up: migrate the service database (alembic), serve the last known production models from
the local copy at once (or wait for the registry when there is none), start the registry poll,
the outcome filler and, unless this is a replica that only enqueues, the training scheduler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from pipelines.db import migrate
from pipelines.redact import describe_error
from pipelines.settings import MODEL_TYPES, Settings, get_settings
from service.errors import install_error_handlers
from service.live import WATCH_CHORE
from service.metrics import BodyLimitMiddleware, LatencyMiddleware, Metrics
from service.routes import (
    backtest,
    dashboard,
    features,
    health,
    metrics,
    models,
    predictions,
    storage,
    stream,
    training,
)
from service.security import GuardMiddleware, check_bind, document_guards
from service.state import DATABASE_CHORE, ServiceState

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def start_service(settings: Settings) -> ServiceState:
    """Everything the lifespan opens, in order (blocking; run it off the event loop)."""
    state = ServiceState.build(settings)
    try:
        migrate(settings)
        state.migrated = True
        state.chores.record(DATABASE_CHORE, None)
    except Exception as error:  # serve from memory; the database chore migrates once it is back
        logger.error("the service database is unreachable at start (%s)", describe_error(error))
        state.chores.record(DATABASE_CHORE, error)
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
    state.models.start(interval_s=settings.model_refresh_interval_ms / 1000, chores=state.chores)
    state.predictor.warm()
    # Each new candle (or newly served version) gives every served model's prediction at once.
    state.every(settings.candle_watch_interval_ms / 1000, WATCH_CHORE, state.watch_candles)
    if settings.run_scheduler:
        from pipelines.candles.feed import attach_feed
        from pipelines.queue.runtime import TrainingScheduler

        scheduler = TrainingScheduler(
            settings,
            production_data_end=state.production_data_end,
            challenger_of=state.challenger_of,
        )
        scheduler.on_training_finished(lambda _job: state.models.trigger())
        attach_feed(scheduler, settings, on_new=state.candles_arrived, store=state.store)
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
    state.every(settings.policy_interval_ms / 1000, "drift", state.check_drift)
    if state.challengers is not None:
        from service.challenger import CHALLENGER_CHORE

        state.every(
            settings.challenger_interval_ms / 1000, CHALLENGER_CHORE, state.challengers.check
        )
    from service.storage import RETENTION_INTERVAL_S, retention

    state.every(RETENTION_INTERVAL_S, "retention", lambda: retention(state))
    state.start_background()


def stop_service(state: ServiceState) -> None:
    """Close what `start_service` opened, newest first; the pending history rows are stored."""
    state.stop_background()
    if state.scheduler is not None:
        state.scheduler.shutdown()
    state.models.stop()
    state.history_writer.stop()


# Parameters whose allowed values the document lists (path, query and body names).
_MODEL_TYPE_PARAMS = frozenset({"model_type", "modelType", "model"})


def _enumerate(schema: dict[str, Any], values: list[str]) -> None:
    target = next((s for s in schema.get("anyOf", []) if s.get("type") == "string"), schema)
    target["enum"] = list(values)


def contract(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The generated document, made exact for this instance: pairs (from the settings) and
    model types as enums, the key scheme only when ML_API_KEY is set, the guards' answers."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if param["name"] == "pair":
                    _enumerate(param["schema"], settings.pairs)
                elif param["name"] in _MODEL_TYPE_PARAMS:
                    _enumerate(param["schema"], list(MODEL_TYPES))
    body = schema.get("components", {}).get("schemas", {}).get("ClearCooldownsBody")
    if body is not None:
        _enumerate(body["properties"]["pair"], settings.pairs)
        _enumerate(body["properties"]["modelType"], list(MODEL_TYPES))
    if not settings.api_key:
        _drop_key(schema)
    document_guards(schema)
    return schema


def _drop_key(schema: dict[str, Any]) -> None:
    # Without ML_API_KEY nothing asks for a key: the document says so (no scheme, no 401).
    schema.get("components", {}).pop("securitySchemes", None)
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict):
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; nothing is opened until its lifespan starts.

    Raises:
        UnsafeBindError: a non-loopback host without ML_API_KEY (service.security.check_bind).
    """
    settings = settings or get_settings()
    check_bind(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await run_in_threadpool(start_service, settings)
        if state.hub is not None:
            state.hub.bind(asyncio.get_running_loop())
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
    for module in (
        health,
        predictions,
        features,
        training,
        models,
        storage,
        metrics,
        stream,
        backtest,
    ):
        app.include_router(module.router)
    app.include_router(dashboard.router)
    app.include_router(health.probes)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(LatencyMiddleware, metrics=meters)
    # Outermost: a foreign Host or Origin is refused before anything else runs.
    app.add_middleware(GuardMiddleware, settings=settings)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = contract(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
