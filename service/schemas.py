"""Response bodies of the REST API, as pydantic models, so the OpenAPI document states them.

Field names are the original service's camelCase JSON names (snake_case here, camelCase on
the wire through the alias generator). The models allow fields they do not name, so a field
added to an answer is passed on, never dropped; tests/service/test_openapi.py checks that
every real answer is fully described. Routes that answer pre-serialised orjson bodies (the
prediction routes) declare their model for the document only; the others are serialised
through it with `response_model_exclude_unset`, so a key that an answer omits stays omitted.
The training queue's bodies are the queue's own models (`pipelines.queue.schemas`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from pipelines.queue.schemas import ActiveJobs, CanTrain, CooldownView, JobView, QueuedJobs
from pipelines.queue.schemas import QueueStatus as QueueStatus


class Schema(BaseModel):
    """camelCase on the wire; fields the model does not name pass through."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="allow"
    )


class Timed(Schema):
    """The per-request fields most answers end with."""

    timestamp: int = Field(description="When the answer was made, epoch milliseconds.")


# Errors


class ErrorBody(Schema):
    """Every error: the words a user can act on, and the HTTP status again."""

    error: str
    status: int


class DuplicateJobBody(ErrorBody):
    """409 of a training request: a job for the pair and model type is already active."""

    existing: JobView


class QueueFieldBody(ErrorBody):
    """422 of the queue: `field` names the parameter that was refused."""

    field: str | None = None


class QueueFullBody(ErrorBody):
    """429 of a training request: the queue holds `limit` queued jobs (ML_MAX_QUEUED_JOBS)."""

    queued: int
    limit: int


class JobConflictBody(ErrorBody):
    """409 of a cancel: the job has ended and cannot be cancelled."""

    job: JobView


_DESCRIPTIONS = {
    401: "Missing or wrong `X-API-Key` header (only when ML_API_KEY is set).",
    404: "Unknown pair, model type, job or candle file; the message names what is allowed.",
    409: "Conflicts with the queue's state.",
    413: "Request body too large.",
    422: "Invalid parameter or body; the message names the value and what is allowed.",
    429: "The queue is full (ML_MAX_QUEUED_JOBS); try again once jobs have run.",
    503: "The service is starting.",
}


def errors(
    *codes: int, models: Mapping[int, type[ErrorBody]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: its error statuses (503 always: the service may be starting),
    each with `ErrorBody` or the model `models` names for it."""
    special = dict(models or {})
    return {
        code: {"model": special.get(code, ErrorBody), "description": _DESCRIPTIONS[code]}
        for code in sorted({*codes, *special, 503})
    }


# Health


class SlotState(Schema):
    """What is served for one pair and model type, and why not when nothing is."""

    state: str = Field(
        description="loaded, no_production_model, refused, load_failed, registry_unreachable "
        "or not_enabled."
    )
    version: str | None
    failed_version: str | None
    message: str


class HealthSlot(SlotState):
    unproven: bool | None = Field(description="The served version did not beat its baselines.")


class TrainingQueueSummary(Schema):
    active: ActiveJobs | None = None
    queued: QueuedJobs | None = None
    cooldowns: list[CooldownView] | None = None


class SchedulerHealth(Schema):
    in_process: bool
    holds_lease: bool | None


class TrainingHealth(Schema):
    queue: TrainingQueueSummary
    paused: bool | None
    max_concurrent: int
    cooldown_minutes: int
    scheduler: SchedulerHealth


class RegistryHealth(Schema):
    last_refresh: int | None
    refresh_interval_ms: int
    swaps: int


class HistoryHealth(Schema):
    rows_dropped: int


class CacheCounts(Schema):
    predictions: int
    features: int
    model_status: int


class HealthPerformance(Schema):
    cache_hits: CacheCounts
    cache_misses: CacheCounts


class Health(Timed):
    """`GET /api/health`."""

    status: Literal["healthy", "degraded"]
    service: str
    quick_mode: bool
    uptime_seconds: float
    models: dict[str, dict[str, HealthSlot]] = Field(description="Pair -> model type -> slot.")
    training: TrainingHealth
    registry: RegistryHealth
    history: HistoryHealth
    performance: HealthPerformance


# Predictions


class PredictionDetail(Schema):
    """The prediction object of the original service."""

    prediction: float = Field(description='Probability of "up".')
    confidence: float
    direction: Literal["up", "down", "neutral"]
    signal: Literal["BUY", "SELL", "HOLD"]
    move: float | None = Field(
        None,
        description="The magnitude forecast: the probability that the next move clears the "
        "round-trip fee (2 x ML_TRADING_FEE); BUY and SELL are held at HOLD below "
        "ML_MOVE_THRESHOLD while ML_MOVE_GATE is on. Null when the version has none.",
    )
    model_type: str


class EnsembleMember(Schema):
    prediction: float
    version: str


class PredictionBody(Schema):
    """One pair's prediction (cached per newest candle and served versions)."""

    pair: str
    prediction: PredictionDetail
    model_version: str | dict[str, str] | None = Field(
        description="The served version; per model type for an ensemble; null for a fallback."
    )
    candle_time: int = Field(description="Open time (epoch ms) of the candle predicted from.")
    candle_age_ms: int = Field(
        description="Milliseconds since that candle closed, by the market's clock."
    )
    stale: bool = Field(
        description="The candle closed more than ML_STALE_AFTER timeframes ago: the signal is "
        "HOLD unless ML_SERVE_STALE=true."
    )
    model_data_end: int | None = Field(
        description="Newest candle (epoch ms) of the served version's training data."
    )
    model_age_hours: float | None = Field(
        description="Hours between that data end and the candle predicted from."
    )
    model_stale: bool = Field(
        description="The model's data ends more than ML_MODEL_MAX_AGE_HOURS before the candle: "
        "the signal is HOLD unless ML_SERVE_STALE=true."
    )
    ensemble: bool
    fallback: bool = Field(description="No model could answer: a neutral HOLD.")
    unproven: bool
    models: dict[str, EnsembleMember] | None = Field(None, description="Ensembles only.")
    reason: str | None = Field(None, description="Why a fallback, or which model is unproven.")
    hold_reasons: list[
        Literal["no_model", "stale_model", "stale_candle", "unproven", "small_move"]
    ] = Field(
        default_factory=list,
        description="Every reason that holds the signal at HOLD whatever the thresholds say "
        "(listed even when the probability lies between the thresholds), in this order: "
        "no_model (a fallback), stale_model, stale_candle, unproven, small_move (the magnitude "
        "forecast `move` is below ML_MOVE_THRESHOLD). Empty for a BUY or SELL, and for a HOLD "
        "that only the thresholds gave.",
    )
    alias: Literal["challenger"] | None = Field(
        None, description="`?alias=challenger` only: the challenger's answer, scored in shadow."
    )
    shadow: bool | None = Field(
        None, description="True for a challenger's answer: production serves the signals."
    )
    source: Literal["store", "request"] | None = Field(
        None, description="Candles of the store, or of the request body."
    )
    cached: bool
    cache_age: int = Field(description="Milliseconds since the answer was computed.")


class Prediction(PredictionBody, Timed):
    """`GET /api/predictions/{pair}` and `POST /api/predictions/{pair}`."""

    response_time: float = Field(description="Milliseconds spent on this request.")


class PairError(Schema):
    """A pair of `GET /api/predictions` that could not be answered."""

    pair: str
    error: str
    status: int


class AllPredictions(Timed):
    """`GET /api/predictions`."""

    predictions: dict[str, PredictionBody | PairError]
    count: int
    ensemble: bool
    response_time: float


class HistoryRow(Schema):
    id: int
    pair: str
    model_type: str
    model_version: str
    candle_time: int
    horizon: int
    timestamp: int
    prediction: float
    direction: str
    signal: str
    unproven: bool
    shadow: bool = Field(
        False, description="A challenger's prediction, scored in shadow (`?alias=challenger`)."
    )
    outcome: Literal["up", "down"] | None
    tie: bool = Field(False, description="The close was unchanged: neither up nor down.")
    correct: bool | None


class PredictionHistory(Timed):
    """`GET /api/predictions/{pair}/history`: newest first."""

    pair: str
    count: int
    total_count: int
    predictions: list[HistoryRow]
    response_time: float


# Features


class Features(Timed):
    """`GET /api/features/{pair}`."""

    pair: str
    candle_time: int
    feature_count: int
    feature_set_version: str
    warmup: int
    lookback: int
    features: dict[str, float | None] = Field(description="Name -> value (null while warming).")
    cached: bool
    cache_age: int
    response_time: float


# Model status


class LiveAccuracyInterval(Schema):
    """The Wilson score interval of the live accuracy."""

    low: float
    high: float
    level: float
    method: Literal["wilson"]


class LiveLogLoss(Schema):
    """Mean log loss (nats) and its Newey-West t-interval, rows in candle order."""

    value: float
    low: float
    high: float
    level: float
    lag: int = Field(description="The Newey-West lag (bandwidth) of the interval, in rows.")
    method: Literal["newey-west"]


class Versus(Schema):
    """Per-row log loss, version minus a baseline: mean and paired Newey-West interval."""

    mean: float
    low: float
    high: float
    rows: int
    lag: int
    method: Literal["newey-west"]
    verdict: Literal["better", "worse", "undecided"] = Field(
        description="better: the whole interval lies below 0; worse: above 0."
    )


class LiveBaseline(Schema):
    """A baseline scored on the version's candles (the logistic on those where it was
    recorded), and the version against it there."""

    accuracy: float
    log_loss: float
    rows: int
    versus: Versus


class VersusBaseline(Versus):
    """The version against the naive baseline of lowest log loss on these candles."""

    baseline: str = Field(description="The baseline with the lowest log loss on these candles.")


class LiveAccuracy(Schema):
    """A version's live figures: each store candle with a known outcome counted once."""

    predictions: int = Field(description="Distinct candles with an up or down outcome.")
    correct: int
    accuracy: float | None
    ties: int = Field(description="Realised candles with an unchanged close: scored nowhere.")
    interval: LiveAccuracyInterval
    log_loss: LiveLogLoss
    baselines: dict[str, LiveBaseline] = Field(
        description="coin, base_rate, last_move on the same candles, and logistic (the "
        "version's shipped baseline, scored in shadow) where recorded."
    )
    versus_baseline: VersusBaseline
    first_candle: int = Field(description="Oldest candle scored, epoch milliseconds.")
    last_candle: int = Field(description="Newest candle scored, epoch milliseconds.")


class ModelInfo(Schema):
    name: str
    version: str
    run_id: str | None = Field(None, description="The MLflow run that registered it.")
    feature_set_version: str
    feature_count: int
    sequence_length: int
    horizon: int
    minimum_candles: int
    beats_baseline: bool | None
    unproven: bool
    data_range: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    baseline_metrics: dict[str, Any] | None
    calibration: Literal["none", "temperature", "platt", "isotonic"] | None = Field(
        None, description="How its probabilities are calibrated (ML_CALIBRATION at training)."
    )
    loaded_at: int


class LiveComparison(Schema):
    """The challenger against production on the realised candles both predicted."""

    production_version: str
    challenger_version: str
    rows: int = Field(description="Realised candles both versions predicted.")
    needed: int = Field(description="ML_CHALLENGER_MIN_OUTCOMES: rows needed for a decision.")
    challenger_log_loss: float | None
    production_log_loss: float | None
    delta_mean: float | None = Field(description="Mean per-row log loss, challenger - production.")
    low: float | None = Field(description="95 % paired Newey-West t-interval.")
    high: float | None
    verdict: Literal["better", "worse", "undecided", "waiting"]
    decision: Literal["waiting", "promote", "retire"] = Field(
        description="What the challenger policy does at its next look."
    )
    reason: str
    hours: float | None = Field(description="Hours since it became the challenger.")


class ChallengerStatus(Schema):
    """A version that passed the offline gate, scored in shadow beside production."""

    model_info: ModelInfo
    since: int | None = Field(description="When it became the challenger, epoch ms.")
    comparison: LiveComparison


class ModelTypeStatus(Schema):
    has_model: bool
    status: SlotState
    model_info: ModelInfo | None = None
    live_accuracy: dict[str, LiveAccuracy] = Field(
        description="Version -> live accuracy, log loss and baselines (the challenger's too)."
    )
    challenger: ChallengerStatus | None = Field(
        None, description="The challenger (alias `challenger`), if any, and how it compares."
    )
    challenger_error: str | None = Field(
        None, description="Why the version aliased `challenger` could not be loaded, if so."
    )
    training: CanTrain


class BacktestSummary(Schema):
    """`GET /api/backtests/latest`: the newest finished `tbml backtest` run."""

    found: bool = Field(description="False before any backtest finished in this store.")
    experiment: str = Field(description="The MLflow experiment of backtests.")
    run_id: str | None = None
    name: str | None = None
    pairs: list[str] | None = None
    model_type: str | None = None
    start: str | None = Field(None, description="First replayed hour (ISO 8601).")
    end: str | None = Field(None, description="Last replayed hour (ISO 8601).")
    finished_at: int | None = Field(None, description="When the run ended (epoch ms).")
    metrics: dict[str, float] | None = Field(
        None,
        description="Headline figures over every pair: hours, signalHours, holdHours, "
        "trainings, promotions, returnAfterFees, returnAfterFeesNoMoveGate, buyHoldReturn, "
        "maxDrawdown, sharpe, trades, exposure (fractions, not percent).",
    )
    url: str | None = Field(None, description="The run in the MLflow UI (ML_MLFLOW_UI_URL).")


class ModelStatus(Timed):
    """`GET /api/models/{pair}/status`."""

    pair: str
    feature_count: int | None
    individual: dict[str, ModelTypeStatus]
    training_queue: QueueStatus
    quick_mode: bool
    cached: bool
    cache_age: int


# Storage


class DatabaseStats(Schema):
    dialect: str
    url: str
    size_bytes: int
    tables: dict[str, int]


class FolderStats(Schema):
    path: str
    size_bytes: int
    files: int


class LoadedModel(Schema):
    pair: str
    model_type: str
    version: str


class ModelCacheStats(FolderStats):
    loaded: list[LoadedModel]


class RegistryStats(Schema):
    """Counts of the registry, or `error` when it cannot be reached."""

    registered_models: int | None = None
    versions: int | None = None
    production: dict[str, str] | None = None
    error: str | None = None


class RowCount(Schema):
    count: int


class StorageParts(Schema):
    database: DatabaseStats
    mlruns: FolderStats
    registry: RegistryStats
    model_cache: ModelCacheStats
    predictions: RowCount


class StoragePerformance(HealthPerformance):
    prediction_cache_size: int
    feature_cache_size: int
    model_status_cache_size: int


class StorageStats(Timed):
    """`GET /api/storage/stats`."""

    storage: StorageParts
    performance: StoragePerformance
    training_queue: QueueStatus


class Checkpoint(Schema):
    busy: bool
    wal_pages: int
    checkpointed_pages: int


class Backup(Schema):
    path: str
    size_bytes: int


class SaveResult(Timed):
    """`POST /api/storage/save`: SQLite gets a checkpoint and a backup; a server a `note`."""

    saved: bool
    database: str
    checkpoint: Checkpoint | None = None
    backup: Backup | None = None
    backups_removed: int | None = None
    note: str | None = None


class CleanupResult(Timed):
    """`POST /api/storage/cleanup`."""

    max_age_hours: float
    predictions_deleted: int
    model_copies_deleted: list[str]
    kept: list[str] | None = Field(None, description="Model copies kept (name/version).")
    note: str | None = Field(None, description="Why no model copy was deleted.")


# Background work and probes


class ChoreHealth(Schema):
    """One piece of background work: its latest outcome and when it tries again."""

    state: Literal["ok", "failing"]
    interval_seconds: float | None = Field(description="Its period; null for a thread.")
    last_success: int | None
    last_error: str | None = Field(description="Exception type and a short, redacted message.")
    last_error_at: int | None
    consecutive_failures: int
    next_retry: int | None = Field(description="When a failing chore tries again, epoch ms.")


class DatabaseHealth(Schema):
    state: Literal["up", "down"]
    migrated: bool = Field(description="The schema was brought to head since this process began.")
    last_error: str | None


class FeedHealth(Schema):
    """One pair's live candles: the store's newest, and the feed's last attempts."""

    newest_candle: int | None = Field(description="Open time (epoch ms) of the newest candle.")
    newest_close: int | None = Field(None, description="Its close time (epoch ms).")
    lag_ms: int | None = Field(description="Market time since that candle closed.")
    last_success: int | None = None
    last_attempt: int | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    clock_offset_ms: int | None = Field(
        None, description="The exchange's clock minus the fetcher's, at its last success."
    )
    fetcher: str | None = Field(None, description="host:pid of the process that fetches.")
    state: Literal["ok", "failing", "lagging", "off"] = Field(
        description="off: no feed runs anywhere (ML_FEED=false, or no scheduler yet)."
    )


class StaleModel(Schema):
    pair: str
    model_type: str
    version: str
    model_data_end: int
    model_age_hours: float


class StaleReport(Schema):
    feeds: list[str] = Field(description="Pairs whose newest candle is stale (ML_STALE_AFTER).")
    models: list[StaleModel] = Field(
        description="Served versions older than ML_MODEL_MAX_AGE_HOURS."
    )


class DriftHealth(Schema):
    pair: str
    model_type: str
    version: str
    rows: int
    model_log_loss: float
    baselines: dict[str, float] = Field(description="The drift baseline's mean log loss.")
    best_baseline: str = Field(description="The one baseline drift compares with: base_rate.")
    interval: list[float] = Field(description="95 % interval of model minus that baseline.")
    drifting: bool = Field(description="The CUSUM has alarmed on this version's rows.")
    statistic: float | None = Field(None, description="The CUSUM after the newest row (sd).")
    threshold: float | None = Field(None, description="ML_DRIFT_THRESHOLD (sd).")
    reference: float | None = Field(None, description="ML_DRIFT_REFERENCE (sd).")
    warming_up: bool | None = Field(None, description="Within the first ML_DRIFT_WARMUP rows.")
    alarms: int | None = Field(None, description="Alarms on this version's rows.")
    last_alarm: int | None = Field(None, description="Candle of the newest alarm, epoch ms.")


class StreamHealth(Schema):
    connections: int
    max_connections: int
    published: int
    dropped: int


class HealthReport(Health):
    """`GET /api/health`: `Health` plus the database and every piece of background work."""

    database: DatabaseHealth
    background: dict[str, ChoreHealth] = Field(description="Chore name -> its state.")
    feed: dict[str, FeedHealth] = Field(description="Pair -> its live candles.")
    stale: StaleReport
    drift: list[DriftHealth] = Field(
        default_factory=list,
        description="Per production version with realised outcomes: the sequential drift test "
        "(CUSUM) of its live log loss against the base rate on the same candles; `drifting` "
        "makes health degraded.",
    )
    stream: StreamHealth | None = None


class Liveness(Timed):
    """`GET /livez`: the process answers (nothing else is asked)."""

    status: Literal["alive"]
    uptime_seconds: float


class Readiness(Timed):
    """`GET /readyz` 200: the database and the registry are reachable."""

    status: Literal["ready"]
    database: Literal["up"]
    registry: Literal["up"]


class NotReady(ErrorBody):
    """`GET /readyz` 503: what is down, and its redacted error."""

    database: Literal["up", "down"]
    registry: Literal["up", "down"]
    down: list[str] = Field(description="What is not reachable.")
    errors: dict[str, str] = Field(description="What is down -> its redacted error.")
