"""`GET /api/health` (models, queue, caches, database, background work in the original's shape
plus what is new), `GET /livez` (the process answers) and `GET /readyz` (database and registry
reachable). None of them fails when the database is down: they say so."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipelines.lifecycle.staleness import model_age_hours, model_stale
from pipelines.redact import describe_error
from service.deps import StateDep
from service.model_cache import REFRESH_CHORE
from service.predictor import epoch_ms, model_data_end, model_validated_through
from service.schemas import HealthReport, Liveness, NotReady, Readiness, errors
from service.state import DATABASE_CHORE, ServiceState

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["health"])
probes = APIRouter(tags=["health"])

# Slot states that mean something is wrong (as opposed to "nothing trained yet").
_DEGRADED = {"refused", "load_failed", "registry_unreachable"}


def _queue(state: ServiceState) -> tuple[dict[str, Any], str | None]:
    """The queue's summary, or nothing and the error when the database does not answer."""
    try:
        return state.queue.queue_status(history_limit=0).queue.to_json_dict(), None
    except Exception as error:
        logger.warning("health: the queue is unreadable: %s", describe_error(error))
        return {}, describe_error(error)


def _freshness(
    state: ServiceState,
) -> tuple[dict[str, dict[str, Any]], list[str], list[dict[str, Any]]]:
    """Per pair, the feed's state; the pairs whose newest candle is stale; the served versions
    older than ML_MODEL_MAX_AGE_HOURS (`pipelines.lifecycle.staleness`)."""
    from pipelines.candles.feed import feed_view

    settings = state.settings
    feeds = feed_view(settings, state.store, now_ms=state.market_now_ms())
    step_ms = state.predictor.step_ms
    stale_feeds = [
        pair
        for pair, view in sorted(feeds.items())
        if view.get("lagMs") is not None and view["lagMs"] > settings.stale_after * step_ms
    ]
    stale_models: list[dict[str, Any]] = []
    for model in state.models.all():
        end = model_data_end(model)
        newest = feeds.get(model.pair, {}).get("newestCandle")
        if end is None or newest is None:
            continue
        hours = model_age_hours(
            newest=pd.Timestamp(newest, unit="ms", tz="UTC"),
            data_end=end,
            validated_through=model_validated_through(model),
        )
        if model_stale(hours, max_age_hours=settings.model_max_age_hours):
            stale_models.append(
                {
                    "pair": model.pair,
                    "modelType": model.model_type,
                    "version": model.version,
                    "modelDataEnd": epoch_ms(end),
                    "modelAgeHours": round(hours, 2),
                }
            )
    return feeds, stale_feeds, stale_models


def health_body(state: ServiceState) -> dict[str, Any]:
    """The health answer (reads the queue from the database: call it off the event loop)."""
    settings = state.settings
    models: dict[str, dict[str, Any]] = {}
    degraded = False
    for (pair, model_type), status in sorted(state.models.statuses().items()):
        served = state.models.get(pair, model_type)
        entry = status.to_dict()
        entry["unproven"] = served.unproven if served else None
        models.setdefault(pair, {})[model_type] = entry
        degraded |= status.state in _DEGRADED
    feeds, stale_feeds, stale_models = _freshness(state)
    drifting = [entry for entry in state.drift.values() if entry.get("drifting")]
    degraded |= bool(stale_feeds or stale_models or drifting)
    queue, queue_error = _queue(state)
    background = state.background()
    database = background.get(DATABASE_CHORE)
    database_error = queue_error or (database.last_error if database and database.failing else None)
    degraded |= database_error is not None or any(c.failing for c in background.values())
    scheduler = state.scheduler
    return {
        "status": "degraded" if degraded else "healthy",
        "service": "trading-bot-ml",
        "quickMode": list(settings.enabled_models) == ["lstm"],
        "uptimeSeconds": round(time.time() - state.started_at, 1),
        "models": models,
        "training": {
            "queue": {k: queue[k] for k in ("active", "queued", "cooldowns") if k in queue},
            "paused": queue.get("paused"),
            "maxConcurrent": settings.max_concurrent_training,
            "cooldownMinutes": settings.training_cooldown_ms // 60_000,
            "scheduler": {
                "inProcess": scheduler is not None,
                "holdsLease": bool(scheduler.holds_lease) if scheduler is not None else None,
            },
        },
        "registry": {
            "lastRefresh": int(state.models.last_refresh * 1000)
            if state.models.last_refresh
            else None,
            "refreshIntervalMs": settings.model_refresh_interval_ms,
            "swaps": state.models.swaps,
        },
        "feed": feeds,
        "stale": {"feeds": stale_feeds, "models": stale_models},
        "drift": [state.drift[key] for key in sorted(state.drift)],
        "stream": state.hub.stats() if state.hub is not None else None,
        "history": {"rowsDropped": state.history_writer.dropped},
        "performance": {"cacheHits": state.cache_hits(), "cacheMisses": state.cache_misses()},
        "database": {
            "state": "down" if database_error else "up",
            "migrated": state.migrated,
            "lastError": database_error,
        },
        "background": {name: chore.to_dict() for name, chore in sorted(background.items())},
        "timestamp": int(time.time() * 1000),
    }


@router.get(
    "/health", response_model=HealthReport, response_model_exclude_unset=True, responses=errors()
)
async def health(state: StateDep) -> dict[str, Any]:
    """Service health: served models per pair, training queue, caches, database, background."""
    return await run_in_threadpool(health_body, state)


@probes.get("/livez", response_model=Liveness, responses=errors())
async def livez(state: StateDep) -> dict[str, Any]:
    """The process is alive: asks neither the database nor the registry (a liveness probe)."""
    return {
        "status": "alive",
        "uptimeSeconds": round(time.time() - state.started_at, 1),
        "timestamp": int(time.time() * 1000),
    }


def readiness(state: ServiceState) -> dict[str, Any]:
    """What of the database (reachable and migrated) and the registry is down now."""
    problems: dict[str, str] = {}
    try:
        state.ping_database()
    except Exception as error:
        problems["database"] = describe_error(error)
    else:
        if not state.migrated:
            problems["database"] = "reachable, not migrated yet (the database chore migrates it)"
    refresh = state.chores.statuses().get(REFRESH_CHORE)
    unreachable = any(s.state == "registry_unreachable" for s in state.models.statuses().values())
    if refresh is not None and refresh.failing:
        problems["registry"] = refresh.last_error or "unreachable"
    elif unreachable:
        problems["registry"] = "the registry did not answer the last poll"
    return problems


@probes.get(
    "/readyz",
    response_model=Readiness,
    responses=errors(models={503: NotReady}),
)
async def readyz(state: StateDep) -> Any:
    """Ready for traffic: 200 when the database and the registry are reachable, else 503
    naming what is down."""
    problems = await run_in_threadpool(readiness, state)
    now = int(time.time() * 1000)
    if not problems:
        return {"status": "ready", "database": "up", "registry": "up", "timestamp": now}
    body = NotReady(
        error=f"not ready: {', '.join(sorted(problems))} down",
        status=503,
        database="down" if "database" in problems else "up",
        registry="down" if "registry" in problems else "up",
        down=sorted(problems),
        errors=problems,
    )
    return JSONResponse(status_code=503, content=body.model_dump())
