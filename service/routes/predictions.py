"""Predictions: newest candles of the store (GET) or candles in the body (POST); history."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import pandas as pd
from fastapi import APIRouter, Query, Request, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
)
from starlette.concurrency import run_in_threadpool

from pipelines.candles.store import CandlesNotFoundError
from pipelines.candles.validate import CandleValidationError, validate_candles
from pipelines.tracking import CHALLENGER_ALIAS, PRODUCTION_ALIAS
from service.deps import StateDep, get_state, valid_model_type, valid_pair
from service.errors import ApiError, no_candles
from service.predictor import InsufficientCandlesError, NoChallengerError
from service.schemas import AllPredictions, Prediction, PredictionHistory, errors
from service.state import ServiceState

router = APIRouter(prefix="/api", tags=["predictions"])

ModelQuery = Annotated[
    str | None,
    Query(description="Model type: lstm, gru, cnn or transformer (default: the first enabled)."),
]
EnsembleQuery = Annotated[bool, Query(description="Average the pair's production models.")]
# The registry aliases a prediction can be asked of (`?alias=`).
ALIASES: tuple[str, ...] = (PRODUCTION_ALIAS, CHALLENGER_ALIAS)
# Epoch milliseconds below this are more likely seconds (1e11 ms is March 1973); from the
# upper bound on (2200-01-01) they are more likely microseconds, and near it pandas' time range
# ends (2262).
MIN_EPOCH_MS = 10**11
MAX_EPOCH_MS = 7_258_118_400_000
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
# Strict: a boolean is not a price (JSON numbers, integers included, are). Bounded so that the
# features' ratios and products stay finite: 1e-12 to 1e12 covers every traded price.
Price = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=1e-12, le=1e12)]
Volume = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1e15)]


def _json(body: dict[str, Any], start: float, status_code: int = 200) -> Response:
    body["responseTime"] = round((time.perf_counter() - start) * 1000, 3)
    body["timestamp"] = int(time.time() * 1000)
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


async def _predict(
    state: ServiceState,
    pair: str,
    model_type: str,
    ensemble: bool,
    alias: str = PRODUCTION_ALIAS,
) -> Any:
    # A cached answer (or one from cached features) on the event loop; the rest in a thread.
    try:
        body = state.predictor.answer_now(
            pair=pair, model_type=model_type, ensemble=ensemble, alias=alias
        )
        if body is not None:
            return body
        return await run_in_threadpool(
            state.predictor.predict,
            pair=pair,
            model_type=model_type,
            ensemble=ensemble,
            alias=alias,
        )
    except NoChallengerError as exc:
        raise ApiError(
            404,
            f"{pair} has no {model_type} challenger: no version holds the alias "
            f"'{CHALLENGER_ALIAS}' (a version that passes the offline gate while another is "
            "production becomes one, with ML_PROMOTION=shadow)",
        ) from exc
    except CandlesNotFoundError as exc:
        raise no_candles(exc, pair=pair, timeframe=state.settings.timeframe) from exc
    except InsufficientCandlesError as exc:
        raise ApiError(422, str(exc)) from exc


@router.get("/predictions", response_model=AllPredictions, responses=errors(422))
async def all_predictions(
    state: StateDep, model: ModelQuery = None, ensemble: EnsembleQuery = False
) -> Response:
    """The prediction of every configured pair (a pair that cannot be answered gets `error`)."""
    start = time.perf_counter()
    model_type = valid_model_type(state, model)
    answers: dict[str, Any] = {}
    for pair in state.settings.pairs:
        try:
            answers[pair] = await _predict(state, pair, model_type, ensemble)
        except ApiError as exc:
            answers[pair] = {"pair": pair, "error": exc.message, "status": exc.status_code}
    return _json({"predictions": answers, "count": len(answers), "ensemble": ensemble}, start)


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
# The hot route reads its parameters itself (FastAPI's per-request parameter solving costs more
# than the cached answer), so they are declared for the OpenAPI schema here.
_PREDICTION_PARAMETERS = [
    {"name": "pair", "in": "path", "required": True, "schema": {"type": "string"}},
    {
        "name": "model",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["lstm", "gru", "cnn", "transformer"]},
        "description": "Model type (default: the first of ML_ENABLED_MODELS).",
    },
    {
        "name": "ensemble",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "Average the pair's production models.",
    },
    {
        "name": "alias",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": list(ALIASES), "default": PRODUCTION_ALIAS},
        "description": "challenger: the answer of the pair's challenger, scored in shadow "
        "(404 when it has none); production (the default) is what serves.",
    },
]


def _alias(value: str | None, *, ensemble: bool) -> str:
    if value is None:
        return PRODUCTION_ALIAS
    text = value.strip().lower()
    if text not in ALIASES:
        raise ApiError(422, f"alias: {value!r} is not one of {', '.join(repr(a) for a in ALIASES)}")
    if ensemble and text != PRODUCTION_ALIAS:
        raise ApiError(422, "alias: an ensemble averages production models; drop ensemble")
    return text


def _flag(name: str, value: str | None) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiError(422, f"{name}: Input should be a valid boolean (got {value!r})")


@router.get(
    "/predictions/{pair}",
    openapi_extra={"parameters": _PREDICTION_PARAMETERS},
    response_model=Prediction,
    responses=errors(404, 422),
)
async def prediction(request: Request) -> Response:
    """The prediction for one pair from the newest candles, cached 30 s per candle and version.

    A cached answer is a dictionary lookup on the event loop; only a miss takes a thread.
    """
    start = time.perf_counter()
    state = get_state(request)
    query = request.query_params
    pair = valid_pair(state, request.path_params["pair"])
    model_type = valid_model_type(state, query.get("model"))
    ensemble = _flag("ensemble", query.get("ensemble"))
    alias = _alias(query.get("alias"), ensemble=ensemble)
    body = await _predict(state, pair, model_type, ensemble, alias)
    return _json(body, start)


def _check_ms(value: datetime | int) -> datetime | int:
    if isinstance(value, bool) or not isinstance(value, datetime | int):
        raise ValueError("a timestamp is an ISO 8601 string or integer epoch milliseconds")
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if not datetime(1970, 1, 1, tzinfo=UTC) <= aware < MAX_TIME:
            raise ValueError(f"timestamp {value.isoformat()} is outside 1970 to 2200")
        return value
    if not MIN_EPOCH_MS <= value < MAX_EPOCH_MS:
        raise ValueError(
            f"timestamp {value} is not epoch milliseconds (from {MIN_EPOCH_MS} to "
            f"{MAX_EPOCH_MS}, 1973 to 2200); seconds must be multiplied by 1000"
        )
    return value


# Bounds checked by `_check_ms` (its message says what went wrong), stated for the document.
EpochMs = Annotated[
    int,
    Field(
        strict=True,
        json_schema_extra={"minimum": MIN_EPOCH_MS, "exclusiveMaximum": MAX_EPOCH_MS},
    ),
    AfterValidator(_check_ms),
]


class CandleIn(BaseModel):
    """One candle; `timestamp` is its open time (ISO 8601, or epoch milliseconds; UTC)."""

    model_config = ConfigDict(extra="forbid")

    timestamp: EpochMs | datetime
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Volume

    @field_validator("timestamp", mode="before")
    @classmethod
    def _form(cls, value: object) -> object:
        # Not a number read as seconds, nor a boolean as 1 ms: a string or an integer.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("a timestamp is an ISO 8601 string or integer epoch milliseconds")
        if isinstance(value, int):
            _check_ms(value)  # not read as a date by the other member of the union
        return value

    @field_validator("timestamp")
    @classmethod
    def _milliseconds(cls, value: datetime | int) -> datetime | int:
        return _check_ms(value)


# `[time_ms, open, high, low, close, volume]`, as ccxt's `fetch_ohlcv` returns a candle.
CandleRow = tuple[
    EpochMs,
    Price,
    Price,
    Price,
    Price,
    Volume,
]


def _candle_form(value: Any) -> str | None:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "row"
    return None


class CandlesBody(BaseModel):
    """Candles oldest first: objects `{timestamp, open, high, low, close, volume}` or
    `[time_ms, open, high, low, close, volume]` rows as ccxt's `fetch_ohlcv` returns them."""

    model_config = ConfigDict(extra="forbid")

    candles: list[
        Annotated[
            Annotated[CandleIn, Tag("object")] | Annotated[CandleRow, Tag("row")],
            Discriminator(
                _candle_form,
                custom_error_type="candle_form",
                custom_error_message=(
                    "a candle is an object {timestamp, open, high, low, close, volume} or a "
                    "row [time_ms, open, high, low, close, volume]"
                ),
            ),
        ]
    ] = Field(min_length=1)


def _stamp_ns(value: datetime | int) -> int:
    if isinstance(value, int):
        return value * 1_000_000
    stamp = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return int(pd.Timestamp(stamp).value)


def candles_frame(body: CandlesBody, *, limit: int) -> pd.DataFrame:
    """The body's candles as a store-shaped frame, validated by the store's rules."""
    if len(body.candles) > limit:
        raise ApiError(
            413, f"{len(body.candles)} candles sent: at most {limit} (ML_MAX_REQUEST_CANDLES)"
        )
    rows = [
        (c.timestamp, c.open, c.high, c.low, c.close, c.volume) if isinstance(c, CandleIn) else c
        for c in body.candles
    ]
    index = pd.DatetimeIndex(
        np.array([_stamp_ns(r[0]) for r in rows], dtype="datetime64[ns]"), name="timestamp"
    ).tz_localize("UTC")
    frame = pd.DataFrame(
        [r[1:] for r in rows],
        index=index,
        columns=["open", "high", "low", "close", "volume"],
        dtype="float64",
    )
    try:
        validate_candles(frame, "request body")
    except CandleValidationError as exc:
        # The validator counts file lines (header = line 1); here rows are list positions.
        where = f"candles[{exc.line - 2}]" if exc.line is not None else "candles"
        raise ApiError(422, f"{where}: {exc.rule}: {exc.detail}") from exc
    return frame


@router.post("/predictions/{pair}", response_model=Prediction, responses=errors(404, 413, 422))
async def prediction_from_candles(
    state: StateDep,
    pair: str,
    body: CandlesBody,
    model: ModelQuery = None,
    ensemble: EnsembleQuery = False,
) -> Response:
    """Predict from candles in the request body (for bots that hold their own data).

    Send at least the model's warm-up plus window of candles (see `minimumCandles` in
    `/api/models/{pair}/status`); with the newest `lookback + sequence length` candles of the
    store the answer equals `GET` exactly.
    """
    start = time.perf_counter()
    symbol = valid_pair(state, pair)
    model_type = valid_model_type(state, model)
    frame = candles_frame(body, limit=state.settings.max_request_candles)
    try:
        answer = await run_in_threadpool(
            state.predictor.predict_candles,
            pair=symbol,
            model_type=model_type,
            ensemble=ensemble,
            candles=frame,
        )
    except InsufficientCandlesError as exc:
        raise ApiError(422, str(exc)) from exc
    return _json(answer, start)


# What `since` accepts, in the document's words: the check below is its one reading.
SINCE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": "^[0-9]{1,18}$"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "date"},
    ]
}
_MOMENT: TypeAdapter[datetime] = TypeAdapter(datetime)


def parse_since(value: str) -> int:
    """`since` as epoch milliseconds (up to 18 ASCII digits) or an RFC 3339 time or date (UTC
    unless it says otherwise)."""
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,18}", text):
        return int(text)
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ].+)?", text):
            raise ValueError(text)
        moment = _MOMENT.validate_strings(text)
    except ValueError:
        raise ApiError(
            422,
            f"since {value!r}: expected epoch milliseconds (1704067200000) or an ISO 8601 time "
            "(2024-01-01T00:00:00Z)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@router.get(
    "/predictions/{pair}/history",
    response_model=PredictionHistory,
    responses=errors(404, 422),
)
async def prediction_history(
    state: StateDep,
    pair: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only predictions made at or after this time: epoch ms or ISO 8601.",
            json_schema_extra=SINCE_SCHEMA,
        ),
    ] = None,
    alias: Annotated[
        Literal["production", "challenger"],
        Query(description="challenger: the challengers' predictions, scored in shadow."),
    ] = "production",
) -> Response:
    """Stored predictions, newest first, with their realised outcome once the horizon passed:
    production's, or with `alias=challenger` those its challengers made in shadow."""
    start = time.perf_counter()
    symbol = valid_pair(state, pair)
    since_ms = parse_since(since) if since is not None else None
    shadow = alias == CHALLENGER_ALIAS
    rows = await run_in_threadpool(
        state.history.recent, pair=symbol, limit=limit, since_ms=since_ms, shadow=shadow
    )
    total = await run_in_threadpool(state.history.count, pair=symbol, shadow=shadow)
    return _json(
        {"pair": symbol, "count": len(rows), "totalCount": total, "predictions": rows}, start
    )
