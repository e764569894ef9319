"""`GET /api/models/{pair}/status`: served versions, their test and live accuracy, training."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from pipelines.lifecycle.live import RealisedRows, live_figures
from pipelines.settings import MODEL_TYPES
from service.challenger import compare
from service.deps import StateDep, valid_pair
from service.model_cache import ServedModel
from service.schemas import ModelStatus, errors
from service.state import ServiceState

router = APIRouter(prefix="/api", tags=["models"])


def _version_info(served: ServedModel) -> dict[str, Any]:
    """A loaded version: registry name and number, run, feature set, offline metrics."""
    meta = served.bundle.metadata
    return {
        "name": served.name,
        "version": served.version,
        "runId": served.run_id,
        "featureSetVersion": served.bundle.spec.version,
        "featureCount": len(served.bundle.spec.names),
        "sequenceLength": served.bundle.sequence_length,
        "horizon": served.bundle.horizon,
        "minimumCandles": served.bundle.spec.warmup + served.bundle.sequence_length,
        "beatsBaseline": served.bundle.beats_baseline,
        "unproven": served.unproven,
        "dataRange": meta.get("data_range"),
        "testMetrics": meta.get("test_metrics"),
        "baselineMetrics": meta.get("baseline_metrics"),
        "calibration": served.bundle.calibrator.method,
        "loadedAt": int(served.loaded_at * 1000),
    }


def _challenger_info(
    state: ServiceState, pair: str, model_type: str, realised: list[RealisedRows]
) -> dict[str, Any] | None:
    """The slot's challenger beside production: its version, and the live comparison."""
    challenger = state.models.challenger(pair, model_type)
    production = state.models.get(pair, model_type)
    if challenger is None or production is None:
        return None
    comparison = compare(
        realised, production=production, challenger=challenger, settings=state.settings
    )
    return {
        "modelInfo": _version_info(challenger),
        "since": challenger.since_ms,
        "comparison": comparison.to_json(),
    }


def _model_info(state: ServiceState, pair: str, model_type: str) -> dict[str, Any]:
    """What is served for one model type: version, feature set, test metrics, status."""
    served = state.models.get(pair, model_type)
    status = state.models.status(pair, model_type)
    entry: dict[str, Any] = {"hasModel": served is not None, "status": status.to_dict()}
    if served is not None:
        entry["modelInfo"] = _version_info(served)
    return entry


def _served_part(state: ServiceState, pair: str) -> tuple[dict[str, Any], bool, int]:
    """Model info and live figures (`pipelines.lifecycle.live`) per model type; cached 1 min per
    served versions and slot states (a refused or failed version shows at once)."""
    versions = tuple((m.model_type, m.version) for m in state.models.models_of(pair))
    versions += tuple(
        (m.model_type, f"challenger {m.version}")
        for m in state.models.challengers()
        if m.pair == pair
    )
    slots = tuple(state.models.status(pair, m) for m in MODEL_TYPES)
    failures = tuple(
        sorted((k, v) for k, v in state.models.challenger_errors.items() if k[0] == pair)
    )
    key = (pair, versions, slots, failures)
    hit = state.model_status_cache.get(key)
    if hit is not None:
        return hit.value, True, hit.age_ms
    realised = state.history.realised_rows(pair=pair)  # read once: figures and comparison
    live = {
        (f.model_type, f.model_version): f
        for f in live_figures(realised, state.store, pair=pair, timeframe=state.settings.timeframe)
    }
    individual: dict[str, Any] = {}
    for model_type in MODEL_TYPES:
        enabled = model_type in state.settings.enabled_models
        if not enabled and state.models.get(pair, model_type) is None:
            continue
        entry = _model_info(state, pair, model_type)
        entry["liveAccuracy"] = {
            version: figures.to_json()
            for (kind, version), figures in live.items()
            if kind == model_type
        }
        entry["challenger"] = _challenger_info(state, pair, model_type, realised)
        failure = state.models.challenger_errors.get((pair, model_type))
        if failure is not None:
            entry["challengerError"] = failure
        individual[model_type] = entry
    first = next(iter(state.models.models_of(pair)), None)
    part = {
        "featureCount": len(first.bundle.spec.names) if first else None,
        "individual": individual,
    }
    state.model_status_cache.put(key, part)
    return part, False, 0


def model_status(state: ServiceState, pair: str) -> dict[str, Any]:
    """The status body; the training fields are read fresh (a queued job shows at once)."""
    part, cached, age = _served_part(state, pair)
    individual = {
        model_type: {
            **entry,
            "training": state.queue.can_train(pair=pair, model_type=model_type).to_json_dict(),
        }
        for model_type, entry in part["individual"].items()
    }
    return {
        "pair": pair,
        "featureCount": part["featureCount"],
        "individual": individual,
        "trainingQueue": state.queue.queue_status(history_limit=0).queue.to_json_dict(),
        "quickMode": list(state.settings.enabled_models) == ["lstm"],
        "cached": cached,
        "cacheAge": age,
    }


@router.get(
    "/models/{pair}/status",
    response_model=ModelStatus,
    response_model_exclude_unset=True,
    responses=errors(404, 422),
)
async def status(state: StateDep, pair: str) -> dict[str, Any]:
    """Per model type: the served version, its test metrics and live accuracy, can it train."""
    symbol = valid_pair(state, pair)
    body = await run_in_threadpool(model_status, state, symbol)
    body["timestamp"] = int(time.time() * 1000)
    return body
