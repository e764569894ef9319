"""Storage routes: statistics, a database checkpoint, retention cleanup."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.deps import ApiKeyDep, StateDep
from service.schemas import CleanupResult, SaveResult, StorageStats, errors
from service.storage import checkpoint, cleanup, storage_stats

router = APIRouter(prefix="/api/storage", tags=["storage"])


class CleanupBody(BaseModel):
    """`{maxAgeHours}`: prediction history older than this is deleted."""

    model_config = ConfigDict(extra="forbid")

    # Strict: `true` is not one hour.
    maxAgeHours: float | None = Field(  # noqa: N815 - original's name
        None, gt=0, le=24 * 3650, strict=True, allow_inf_nan=False
    )


@router.get(
    "/stats",
    response_model=StorageStats,
    response_model_exclude_unset=True,
    responses=errors(),
)
async def stats(state: StateDep) -> dict[str, Any]:
    """Database rows and sizes, `mlruns/` size, registry counts, cache sizes and hits."""
    body = await run_in_threadpool(storage_stats, state)
    body["timestamp"] = int(time.time() * 1000)
    return body


@router.post(
    "/save",
    dependencies=[ApiKeyDep],
    response_model=SaveResult,
    response_model_exclude_unset=True,
    responses=errors(401),
)
async def save(state: StateDep) -> dict[str, Any]:
    """Checkpoint the service database (SQLite: WAL checkpoint and a backup copy)."""
    body = await run_in_threadpool(checkpoint, state)
    body["timestamp"] = int(time.time() * 1000)
    return body


@router.post(
    "/cleanup",
    dependencies=[ApiKeyDep],
    response_model=CleanupResult,
    response_model_exclude_unset=True,
    responses=errors(401, 422),
)
async def clean(
    state: StateDep, body: Annotated[CleanupBody | None, Body()] = None
) -> dict[str, Any]:
    """Delete prediction history older than `maxAgeHours` (default ML_STORAGE_MAX_AGE_HOURS)
    and local model copies no longer served; never touches a production version."""
    hours = (body.maxAgeHours if body else None) or state.settings.storage_max_age_hours
    result = await run_in_threadpool(cleanup, state, max_age_hours=hours)
    result["timestamp"] = int(time.time() * 1000)
    return result
