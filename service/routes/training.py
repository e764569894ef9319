"""Training routes over the queue's domain API (the same calls `tbml queue` makes)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pipelines.queue.errors import (
    DuplicateJobError,
    JobNotCancellableError,
    QueueValidationError,
    UnknownJobError,
)
from pipelines.queue.schemas import (
    CancelResult,
    ClearCooldownsResult,
    EmergencyStopResult,
    EnqueueResult,
    JobView,
    QueueStatusResponse,
    ResumeResult,
)
from pipelines.training_params import body_schema
from service.deps import ApiKeyDep, StateDep, valid_pair
from service.errors import ApiError
from service.schemas import DuplicateJobBody, JobConflictBody, QueueFieldBody, errors

router = APIRouter(prefix="/api", tags=["training"])

# Both training routes: the key, 202 with the job, and the queue's refusals.
_TRAIN_ROUTE: dict[str, Any] = {
    "dependencies": [ApiKeyDep],
    "status_code": 202,
    "response_model": EnqueueResult,
    "responses": errors(401, 404, models={409: DuplicateJobBody, 422: QueueFieldBody}),
}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def _document_params(schema: dict[str, Any]) -> None:
    # The parameters come from their one definition; the queue checks them (422 naming the
    # value and the rule), so the body model only documents them.
    schema.setdefault("properties", {}).update(body_schema())


class TrainBody(BaseModel):
    """`{epochs, priority, ...}`: priority 1 (highest) to 10, and training parameters
    (pipelines/training_params.py), camelCase or snake_case; each one left out is the
    setting's value."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_document_params)

    priority: Any = 5


class CancelBody(BaseModel):
    """`{reason}`: why the job is cancelled (kept on the job)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=500)


class ClearCooldownsBody(BaseModel):
    """`{pair, modelType}`, `{pair}` or nothing; a misspelt field is refused, not ignored (it
    would otherwise widen what is cleared)."""

    model_config = ConfigDict(extra="forbid")

    pair: str | None = None
    modelType: str | None = None  # noqa: N815 - the original's JSON name


async def _enqueue(state: Any, pair: str, model_type: str, body: TrainBody | None) -> Any:
    symbol = valid_pair(state, pair)
    data = body or TrainBody()
    params = {_snake(k): v for k, v in (data.model_extra or {}).items()}
    try:
        result = await run_in_threadpool(
            state.queue.enqueue,
            pair=symbol,
            model_type=model_type,
            params=params,
            priority=data.priority,
            requested_by="api",
        )
    except DuplicateJobError as exc:
        raise ApiError(409, str(exc), existing=exc.existing.to_json_dict()) from exc
    except QueueValidationError as exc:
        raise ApiError(422, str(exc), field=exc.field) from exc
    return JSONResponse(result.to_json_dict(), status_code=202)


@router.post("/train/{pair}", **_TRAIN_ROUTE)
async def train_default(
    state: StateDep, pair: str, body: Annotated[TrainBody | None, Body()] = None
) -> Any:
    """Queue a training of the pair's default model type (lstm)."""
    return await _enqueue(state, pair, state.settings.enabled_models[0], body)


@router.post("/train/{pair}/{model_type}", **_TRAIN_ROUTE)
async def train(
    state: StateDep, pair: str, model_type: str, body: Annotated[TrainBody | None, Body()] = None
) -> Any:
    """Queue a training; 202 with the job and `canTrain`, 409 naming a job already active."""
    return await _enqueue(state, pair, model_type, body)


@router.get("/training/queue", response_model=QueueStatusResponse, responses=errors())
async def training_queue(state: StateDep) -> Any:
    """Active, queued (in dispatch order), recent history and cooldowns."""
    result = await run_in_threadpool(state.queue.queue_status)
    return result.to_json_dict()


@router.get("/training/job/{job_id}", response_model=JobView, responses=errors(404, 422))
async def training_job(state: StateDep, job_id: str) -> Any:
    """One job with every attempt."""
    try:
        job = await run_in_threadpool(state.queue.get_job, job_id=job_id)
    except UnknownJobError as exc:
        raise ApiError(404, str(exc)) from exc
    return job.to_json_dict()


@router.delete(
    "/training/job/{job_id}",
    dependencies=[ApiKeyDep],
    response_model=CancelResult,
    responses=errors(401, 404, 422, models={409: JobConflictBody}),
)
async def cancel_job(
    state: StateDep, job_id: str, body: Annotated[CancelBody | None, Body()] = None
) -> Any:
    """Cancel a queued job, or kill a training one (its MLflow run ends KILLED)."""
    try:
        result = await run_in_threadpool(
            state.queue.cancel, job_id=job_id, reason=body.reason if body else None
        )
    except UnknownJobError as exc:
        raise ApiError(404, str(exc)) from exc
    except JobNotCancellableError as exc:
        raise ApiError(409, str(exc), job=exc.job.to_json_dict()) from exc
    return result.to_json_dict()


@router.post(
    "/training/emergency-stop",
    dependencies=[ApiKeyDep],
    response_model=EmergencyStopResult,
    responses=errors(401, 422),
)
async def emergency_stop(state: StateDep, body: Annotated[CancelBody | None, Body()] = None) -> Any:
    """Kill the running training, cancel every queued job, pause dispatch until resume."""
    result = await run_in_threadpool(
        state.queue.emergency_stop, reason=body.reason if body else None
    )
    return result.to_json_dict()


@router.post(
    "/training/resume",
    dependencies=[ApiKeyDep],
    response_model=ResumeResult,
    responses=errors(401),
)
async def resume(state: StateDep) -> Any:
    """Dispatch again after an emergency stop."""
    return (await run_in_threadpool(state.queue.resume)).to_json_dict()


@router.post(
    "/training/clear-cooldowns",
    dependencies=[ApiKeyDep],
    response_model=ClearCooldownsResult,
    responses=errors(401, 404, models={422: QueueFieldBody}),
)
async def clear_cooldowns(
    state: StateDep, body: Annotated[ClearCooldownsBody | None, Body()] = None
) -> Any:
    """Clear the cooldown of one pair (and model type), or all."""
    pair = body.pair if body else None
    model_type = body.modelType if body else None
    if pair is not None:
        pair = valid_pair(state, pair)
    try:
        result = await run_in_threadpool(
            state.queue.clear_cooldowns, pair=pair, model_type=model_type
        )
    except QueueValidationError as exc:
        raise ApiError(422, str(exc), field=exc.field) from exc
    return result.to_json_dict()
