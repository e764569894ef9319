"""`GET /api/features/{pair}`: the newest feature row, cached per newest candle (5 min TTL)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from pipelines.candles.store import CandlesNotFoundError
from pipelines.features.compute import latest_features
from pipelines.features.spec import default_spec
from service.deps import StateDep, valid_pair
from service.errors import no_candles
from service.predictor import epoch_ms
from service.schemas import Features, errors
from service.state import ServiceState

router = APIRouter(prefix="/api", tags=["features"])


def feature_view(state: ServiceState, pair: str) -> dict[str, Any]:
    candles = state.store.load(pair, state.settings.timeframe)
    spec = default_spec()
    key = (pair, spec.version, candles.index[-1].value)
    hit = state.feature_view_cache.get(key)
    if hit is not None:
        return {**hit.value, "cached": True, "cacheAge": hit.age_ms}
    row = latest_features(candles, rows=1, spec=spec).iloc[-1]
    values = {name: (None if not np.isfinite(v) else float(v)) for name, v in row.items()}
    body = {
        "pair": pair,
        "candleTime": epoch_ms(candles.index[-1]),
        "featureCount": len(spec.names),
        "featureSetVersion": spec.version,
        "warmup": spec.warmup,
        "lookback": spec.lookback,
        "features": values,
    }
    state.feature_view_cache.put(key, body)
    return {**body, "cached": False, "cacheAge": 0}


@router.get(
    "/features/{pair}",
    response_model=Features,
    response_model_exclude_unset=True,
    responses=errors(404, 422),
)
async def features(state: StateDep, pair: str) -> dict[str, Any]:
    """The features of the newest candle, named as in docs/features.md."""
    start = time.perf_counter()
    symbol = valid_pair(state, pair)
    try:
        body = await run_in_threadpool(feature_view, state, symbol)
    except CandlesNotFoundError as exc:
        raise no_candles(exc, pair=symbol, timeframe=state.settings.timeframe) from exc
    body["responseTime"] = round((time.perf_counter() - start) * 1000, 3)
    body["timestamp"] = int(time.time() * 1000)
    return body
