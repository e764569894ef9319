"""`GET /api/health`: models, queue, caches, in the original's shape plus what is new."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.deps import StateDep
from service.schemas import Health, errors
from service.state import ServiceState

router = APIRouter(prefix="/api", tags=["health"])

# Slot states that mean something is wrong (as opposed to "nothing trained yet").
_DEGRADED = {"refused", "load_failed", "registry_unreachable"}


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
    queue = state.queue.queue_status(history_limit=0).queue.to_json_dict()
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
        "history": {"rowsDropped": state.history_writer.dropped},
        "performance": {"cacheHits": state.cache_hits(), "cacheMisses": state.cache_misses()},
        "timestamp": int(time.time() * 1000),
    }


@router.get("/health", response_model=Health, response_model_exclude_unset=True, responses=errors())
async def health(state: StateDep) -> dict[str, Any]:
    """Service health: served models per pair, training queue, cache hits."""
    return await run_in_threadpool(health_body, state)
