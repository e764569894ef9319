"""Training routes over the queue's domain API (the same calls `tbml queue` makes)."""

from __future__ import annotations

import logging
import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from pipelines.queue.errors import (
    DuplicateJobError,
    JobNotCancellableError,
    QueueFullError,
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
from pipelines.training_params import TrainingParamError, body_schema, lookup
from service.deps import ApiKeyDep, StateDep, valid_pair
from service.errors import ApiError
from service.schemas import (
    DuplicateJobBody,
    JobConflictBody,
    QueueFieldBody,
    QueueFullBody,
    errors,
)
from service.state import ServiceState

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["training"])

# Both training routes: the key, 202 with the job, and the queue's refusals.
_TRAIN_ROUTE: dict[str, Any] = {
    "dependencies": [ApiKeyDep],
    "status_code": 202,
    "response_model": EnqueueResult,
    "responses": errors(
        401, 404, models={409: DuplicateJobBody, 422: QueueFieldBody, 429: QueueFullBody}
    ),
}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def _document_params(schema: dict[str, Any]) -> None:
    # The parameters come from their one definition; the queue checks their bounds (422 naming
    # the value and the rule), so the body model only documents them and checks their JSON type.
    schema.setdefault("properties", {}).update(body_schema())
    schema["additionalProperties"] = False


# Larger than any parameter's bound, small enough for the bounds check's float arithmetic.
_LARGEST = 10**15


class TrainBody(BaseModel):
    """`{epochs, priority, ...}`: priority 1 (highest) to 10, and training parameters
    (pipelines/training_params.py), camelCase or snake_case; each one left out is the
    setting's value."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_document_params)

    priority: int = Field(5, ge=1, le=10, strict=True, description="1 (highest) to 10.")

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        # JSON numbers only: `true` is not 1 epoch, nor `"5"` a number in this body.
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            if name == "priority":
                continue
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or abs(value) > _LARGEST or not math.isfinite(value):
                try:
                    rule = lookup(name).describe()
                except TrainingParamError as error:
                    raise ValueError(str(error)) from None
                raise ValueError(f"invalid {name} {value!r}: expected {rule} (a JSON number)")
        return data


class CancelBody(BaseModel):
    """`{reason}`: why the job is cancelled (kept on the job)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=500)


def _pair_with_model_type(schema: dict[str, Any]) -> None:
    # A model type alone would clear it for every pair: the queue refuses it, the document says
    # so; and each field is a string when present (`null` is refused, see below).
    schema["anyOf"] = [{"required": ["pair"]}, {"not": {"required": ["modelType"]}}]
    for name in ("pair", "modelType"):
        schema["properties"][name] = {"type": "string", "maxLength": 32, "title": name}


class ClearCooldownsBody(BaseModel):
    """`{pair, modelType}`, `{pair}` or nothing; a misspelt field is refused, not ignored (it
    would otherwise widen what is cleared)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_pair_with_model_type)

    pair: str | None = Field(None, max_length=32)
    modelType: str | None = Field(None, max_length=32)  # noqa: N815 - the original's JSON name

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        # Left out, not null: a null would read as "every pair".
        if isinstance(data, dict):
            for name, value in data.items():
                if value is None:
                    raise ValueError(f"{name}: expected a string, or leave the field out")
        return data


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
    except QueueFullError as exc:
        raise ApiError(429, str(exc), queued=exc.queued, limit=exc.limit) from exc
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
    body = result.to_json_dict()
    for job in body["queue"]["active"]["jobs"]:
        if job.get("runId"):
            job["progress"] = await run_in_threadpool(training_progress, state, job)
    return body


def training_progress(state: ServiceState, job: dict[str, Any]) -> dict[str, Any] | None:
    """Epoch n of N and the latest losses of an active job, from its run's metrics (None
    before the first epoch, or when the run cannot be read: the queue answers anyway)."""
    try:
        metrics = state.models.reader.latest_metrics(str(job["runId"]))
    except Exception as exc:  # the tracking store is away: say nothing rather than fail
        logger.debug("no progress for %s: %s", job["id"], exc)
        return None
    refit = "refit_loss" in metrics
    prefix = "refit_" if refit else ""
    loss = metrics.get(f"{prefix}loss")
    if loss is None:
        return None
    val = metrics.get("val_loss")
    epochs = job.get("epochs")
    if refit:
        # The refit runs the epochs that made the kept weights (mlproject.train.refit_epochs).
        best = metrics.get("best_epoch")
        epochs = int(best[1]) + 1 if best else epochs
    return {
        "phase": "refit" if refit else "held_out",
        "epoch": loss[0] + 1,  # steps are Keras's 0-based epochs
        "epochs": epochs,
        "loss": loss[1],
        "valLoss": None if refit or val is None else val[1],
    }


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
