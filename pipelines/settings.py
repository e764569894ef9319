"""Settings of every process (API, worker, training run, CLI), from the environment or `.env`.

Names follow the original service where it had one (`PORT`, `ML_PREDICTION_CACHE_TTL`, ...), and
durations it gave in milliseconds stay in milliseconds so that an original `.env` keeps working.
Relative paths and SQLite URLs are resolved against the project root, so a child process started
in another directory (an MLflow Project run, say) sees the same stores.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipelines.calibration import Mode as CalibrationMode
from pipelines.calibration import check_mode
from pipelines.lifecycle.signal import SignalRules
from pipelines.training_params import PARAMS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Keras networks, exported to ONNX.
NETWORK_TYPES: tuple[str, ...] = ("lstm", "gru", "cnn", "transformer")
# Models of each window's last feature rows (mlproject.tabular): a regularised LightGBM, a
# logistic regression, their blend, and one LightGBM trained on every configured pair.
TABULAR_TYPES: tuple[str, ...] = ("lightgbm", "logistic", "blend", "pooled")
MODEL_TYPES: tuple[str, ...] = (*NETWORK_TYPES, *TABULAR_TYPES)
# The feature set each model type trains on when ML_FEATURE_SET is unset: what the walk-forward
# evaluation chose on its earlier folds and confirmed on the newest (docs/evaluation.md); a type
# not listed, or not evaluated with another set, computes `default`.
EVALUATED_FEATURE_SETS: dict[str, str] = {"lightgbm": "cross"}
ModelType = Literal["lstm", "gru", "cnn", "transformer", "lightgbm", "logistic", "blend", "pooled"]
DEFAULT_RETRAIN_INTERVAL_HOURS = 24.0


def _csv(value: object) -> object:
    """Accept `BTC,ETH` as well as a JSON list for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _bounds(name: str) -> dict[str, Any]:
    return PARAMS[name].field_bounds()


def resolve_path(path: Path) -> Path:
    """A relative path is taken relative to the project root, not the working directory."""
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


def resolve_sqlite_url(url: str) -> str:
    """Make `sqlite:///relative.db` absolute against the project root; other URLs pass through."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(resolve_path(Path(url[len(prefix) :])))
    return url


class Settings(BaseSettings):
    """Every default of the original service, as a setting."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- HTTP service -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("HOST", "ML_HOST"))
    port: int = Field(3001, ge=1, le=65535, validation_alias=AliasChoices("PORT", "ML_PORT"))
    api_key: str | None = Field(None, validation_alias="ML_API_KEY")
    # --- HTTP surface hardening (service/security.py; docs/service.md, "Security") -----------
    # Serve a non-loopback address without ML_API_KEY anyway (state-changing routes open to
    # anyone who reaches it): only for those who mean it.
    allow_unauthenticated: bool = Field(False, validation_alias="ML_ALLOW_UNAUTHENTICATED")
    # Origins (`https://dash.example.org`) allowed to send state-changing requests besides the
    # service's own; empty = only its own.
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="ML_ALLOWED_ORIGINS"
    )
    # `Host` names (no port) the service answers; empty = the bind host and the loopback
    # names, or any name for a 0.0.0.0 / :: bind.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="ML_ALLOWED_HOSTS"
    )

    @field_validator("allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_http_lists(cls, value: object) -> object:
        value = _csv(value)
        if isinstance(value, list):
            return [str(item).strip().rstrip("/").lower() for item in value]
        return value

    # --- candles ------------------------------------------------------------------------------
    pairs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTC", "ETH", "XMR", "RVN"],
        validation_alias=AliasChoices("ML_PAIRS", "TRADING_PAIRS"),
    )
    quote_currency: str = Field("USDT", validation_alias="ML_QUOTE_CURRENCY")
    timeframe: str = Field("1h", validation_alias="ML_TIMEFRAME")
    exchange: str = Field("binance", validation_alias="ML_EXCHANGE")
    data_dir: Path = Field(Path("data"), validation_alias="ML_DATA_DIR")
    # --- live candle feed (pipelines/candles/feed.py; docs/candles.md) ----------------------
    # Fetch each newly closed candle in the process that holds the dispatch lease.
    feed_enabled: bool = Field(True, validation_alias="ML_FEED")
    # Seconds after a candle's close before it is fetched (exchanges publish it a moment late).
    feed_delay_s: float = Field(10.0, ge=0, le=3600, validation_alias="ML_FEED_DELAY")
    # Longest wait between two fetches, in seconds (0 = until the next close): the replay
    # exchange's hours last seconds, so the demo polls every second.
    feed_max_wait_s: float = Field(0.0, ge=0, le=86_400, validation_alias="ML_FEED_MAX_WAIT")
    # Base URL of the exchange's REST API for the feed (a mirror, the replay exchange).
    exchange_url: str | None = Field(None, validation_alias="ML_EXCHANGE_URL")
    # How often every API process looks for a new newest candle in the store (ms).
    candle_watch_interval_ms: int = Field(
        1_000, ge=50, le=3_600_000, validation_alias="ML_CANDLE_WATCH_INTERVAL"
    )
    # --- staleness (docs/service.md, "Staleness") --------------------------------------------
    # A prediction is stale when its candle closed more than this many timeframes ago.
    stale_after: float = Field(2.0, gt=0, le=10_000_000, validation_alias="ML_STALE_AFTER")
    # Serve the signals of stale predictions and stale models (otherwise HOLD).
    serve_stale: bool = Field(False, validation_alias="ML_SERVE_STALE")
    # A model is stale when its newest evidence (its training data's end, or the last candle of
    # a live comparison that kept it: pipelines.lifecycle.staleness) is this much older than the
    # newest candle. Unset: 168 candles' worth, or more when the challenger policy needs it.
    model_max_age_hours: float = Field(
        168.0, gt=0, le=1_000_000, validation_alias="ML_MODEL_MAX_AGE_HOURS"
    )
    bundled_data_dir: Path = Field(Path("data/ohlcv"), validation_alias="ML_BUNDLED_DATA_DIR")

    # --- model and features -------------------------------------------------------------------
    # The training parameters' bounds are those of their one definition (training_params).
    sequence_length: int = Field(
        60, validation_alias="ML_SEQUENCE_LENGTH", **_bounds("sequence_length")
    )
    horizon: int = Field(1, validation_alias="ML_HORIZON", **_bounds("horizon"))
    # Seeds of a network trained side by side and served as one model averaging their
    # probabilities (one ONNX graph): the seed spread of one network reaches 0.02 nats of log
    # loss; k seeds cost k fits.
    network_seeds: int = Field(1, ge=1, le=10, validation_alias="ML_NETWORK_SEEDS")
    # The features every training computes (pipelines.features.spec.FEATURE_SETS): the
    # engineered `default`, `extended` (plus closed 4h and 1d candles' features), `raw` (each
    # candle's log returns and volume, for a network that reads the price sequence itself) or
    # `cross` (default plus the anchor pair's and the market's returns: ML_CROSS_ANCHOR first,
    # then the other configured pairs). Unset: each model type's evaluated set
    # (EVALUATED_FEATURE_SETS; `feature_set_for`).
    feature_set: Literal["default", "extended", "raw", "cross"] | None = Field(
        None, validation_alias="ML_FEATURE_SET"
    )
    cross_anchor: str = Field(
        "BTC", pattern=r"^[A-Z0-9]{2,12}$", validation_alias="ML_CROSS_ANCHOR"
    )
    # The model types served (one per pair and type, each bootstrapped and retrained); the first
    # answers a request that names none. LightGBM is what the walk-forward evaluation chose
    # (pooled over pairs, on the earlier folds) and confirmed (on the newest); the LSTM is still
    # trained and registered for every pair (docs/evaluation.md).
    enabled_models: Annotated[list[ModelType], NoDecode] = Field(
        default_factory=lambda: list[ModelType](["lightgbm", "lstm"]),
        validation_alias="ML_ENABLED_MODELS",
    )
    lstm_units: int = Field(50, validation_alias="ML_LSTM_UNITS", **_bounds("units"))
    lstm_layers: int = Field(2, validation_alias="ML_LSTM_LAYERS", **_bounds("layers"))
    dropout: float = Field(0.2, validation_alias="ML_DROPOUT", **_bounds("dropout"))
    batch_size: int = Field(32, validation_alias="ML_BATCH_SIZE", **_bounds("batch_size"))
    epochs: int = Field(100, validation_alias="ML_EPOCHS", **_bounds("epochs"))
    seed: int = Field(42, validation_alias="ML_SEED", **_bounds("seed"))
    # Newest candles a training uses (0 = all).
    max_rows: int = Field(0, validation_alias="ML_MAX_ROWS", **_bounds("max_rows"))
    buy_threshold: float = Field(0.6, gt=0.5, lt=1.0, validation_alias="ML_BUY_THRESHOLD")
    sell_threshold: float = Field(0.4, gt=0.0, lt=0.5, validation_alias="ML_SELL_THRESHOLD")
    # BUY or SELL only when the version's magnitude forecast (the probability that the next
    # move clears the round-trip fee, 2 x ML_TRADING_FEE) is at least ML_MOVE_THRESHOLD
    # (pipelines.lifecycle.signal); a version without one is not held for it.
    move_gate: bool = Field(True, validation_alias="ML_MOVE_GATE")
    move_threshold: float = Field(0.5, ge=0.0, le=1.0, validation_alias="ML_MOVE_THRESHOLD")

    # --- MLflow -------------------------------------------------------------------------------
    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "ML_TRACKING_URI"),
    )
    artifact_root: Path = Field(Path("mlruns"), validation_alias="ML_ARTIFACT_ROOT")
    experiment_name: str = Field("trading-bot-ml", validation_alias="ML_EXPERIMENT_NAME")
    # Where people open the MLflow UI (`make ui`): the dashboard links runs and versions there.
    mlflow_ui_url: str = Field(
        "http://127.0.0.1:5000", max_length=2000, validation_alias="ML_MLFLOW_UI_URL"
    )

    # --- training, evaluation and promotion (mlproject/; see docs/training.md) ----------------
    evaluation_experiment_name: str = Field(
        "trading-bot-ml-evaluation", validation_alias="ML_EVALUATION_EXPERIMENT_NAME"
    )
    learning_rate: float = Field(
        0.001, validation_alias="ML_LEARNING_RATE", **_bounds("learning_rate")
    )
    early_stopping_patience: int = Field(5, ge=1, validation_alias="ML_EARLY_STOPPING_PATIENCE")
    # After the held-out verdict, refit the same model for the epochs early stopping chose on
    # every sample but the newest ML_GATE_MIN_ROWS (where the gate scores it), and register that
    # one (doubles a training's fitting time).
    refit: bool = Field(True, validation_alias="ML_REFIT")
    # A tabular model's verdict (mlproject.fold.verdict_splits): walk forward over this many
    # consecutive test windows of ML_VERDICT_TEST_ROWS samples ending at the newest, each fold
    # trained on everything before it, so the proof sees an edge of ~0.003 nats; fewer folds
    # when the candles do not reach, a single split when not even two fit. Networks keep the
    # single split (each of their fits costs minutes).
    verdict_folds: int = Field(6, ge=1, le=50, validation_alias="ML_VERDICT_FOLDS")
    verdict_test_rows: int = Field(
        2000, ge=100, le=1_000_000, validation_alias="ML_VERDICT_TEST_ROWS"
    )
    # Validation rows (the newest) on which a training measures permutation feature importance
    # (mlproject.importance); 0 turns it off.
    importance_rows: int = Field(2000, ge=0, le=100_000, validation_alias="ML_IMPORTANCE_ROWS")
    # Newest samples held out for testing, and the samples before them for early stopping.
    test_fraction: float = Field(0.15, gt=0, lt=0.5, validation_alias="ML_TEST_FRACTION")
    validation_fraction: float = Field(
        0.15, gt=0, lt=0.5, validation_alias="ML_VALIDATION_FRACTION"
    )
    # Fraction of the notional paid per position change (Binance spot taker fee: 0.1 %).
    trading_fee: float = Field(
        0.001, ge=0, lt=0.1, validation_alias=AliasChoices("ML_TRADING_FEE", "ML_FEE")
    )
    # Log loss by default: a strictly proper score, so it rewards the calibrated probabilities
    # that the service turns into confidence and signals; accuracy ignores how sure a model is.
    promotion_metric: Literal["log_loss", "brier", "roc_auc", "accuracy", "balanced_accuracy"] = (
        Field("log_loss", validation_alias="ML_PROMOTION_METRIC")
    )
    # How much better than production a challenger must be (in the metric's units); 0 = at
    # least as good. Negative tolerates a slightly worse challenger.
    promotion_margin: float = Field(0.0, ge=-1, le=1, validation_alias="ML_PROMOTION_MARGIN")
    # Rows of a challenger's test window that neither it nor production trained on, at least,
    # for the gate to compare the two; with fewer the challenger is rejected. A refit holds out
    # this many newest samples, so the gate can score it on rows it never learnt.
    gate_min_rows: int = Field(100, ge=1, le=100_000, validation_alias="ML_GATE_MIN_ROWS")
    # Serve the signals of a production version that does not beat its strongest baseline
    # (otherwise the service answers HOLD for it).
    serve_unproven: bool = Field(False, validation_alias="ML_SERVE_UNPROVEN")
    # What passing the offline gate makes of a version while a production version exists:
    # shadow (the alias `challenger`: scored on live candles beside production, and promoted
    # or retired by the challenger policy) or offline (production at once).
    promotion_mode: Literal["shadow", "offline"] = Field("shadow", validation_alias="ML_PROMOTION")
    # Realised live outcomes, scored by both versions, before a challenger may be promoted (5
    # days of hourly candles: production's age then stays below ML_MODEL_MAX_AGE_HOURS).
    challenger_min_outcomes: int = Field(
        120, ge=1, le=100_000, validation_alias="ML_CHALLENGER_MIN_OUTCOMES"
    )
    # Hours a challenger may stay undecided; after them it is retired. Unset: 336 candles'
    # worth, or more when its rows take longer to realise.
    challenger_max_hours: float = Field(
        336.0, gt=0, le=100_000, validation_alias="ML_CHALLENGER_MAX_HOURS"
    )
    # How often the challenger policy looks (ms).
    challenger_interval_ms: int = Field(
        60_000, ge=100, le=86_400_000, validation_alias="ML_CHALLENGER_INTERVAL"
    )
    # Probability calibration on the validation rows (`pipelines.calibration`): none,
    # temperature or platt; one asked for is kept only when it helps on held validation rows.
    calibration: CalibrationMode = Field("none", validation_alias="ML_CALIBRATION")

    @field_validator("cross_anchor", mode="before")
    @classmethod
    def _anchor_symbol(cls, value: object) -> object:
        # `btc` and `BTC/USDT` name BTC, as a pair does everywhere else.
        if isinstance(value, str):
            text = value.strip().upper()
            for sep in ("/", "-", "_"):
                text = text.split(sep, 1)[0]
            return text
        return value

    @field_validator("feature_set", mode="before")
    @classmethod
    def _unset_feature_set(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def feature_set_for(self, model_type: str) -> str:
        """The features a training of `model_type` computes: ML_FEATURE_SET when set, else the
        set the walk-forward evaluation chose for the type (EVALUATED_FEATURE_SETS)."""
        return self.feature_set or EVALUATED_FEATURE_SETS.get(model_type, "default")

    def signal_rules(self) -> SignalRules:
        """What the served signal reads (`pipelines.lifecycle.signal.served_signal`)."""
        return SignalRules(
            buy_threshold=self.buy_threshold,
            sell_threshold=self.sell_threshold,
            serve_unproven=self.serve_unproven,
            serve_stale=self.serve_stale,
            move_gate=self.move_gate,
            move_threshold=self.move_threshold,
        )

    @field_validator("calibration", mode="before")
    @classmethod
    def _offered_calibration(cls, value: object) -> CalibrationMode:
        return check_mode(value)

    # Walk-forward evaluation (`tbml evaluate`): folds of test windows over the full history,
    # each model as it is deployed (the training's epochs and early stopping).
    walk_forward_folds: int = Field(6, ge=1, le=20, validation_alias="ML_WALK_FORWARD_FOLDS")
    walk_forward_test_size: int = Field(2000, ge=50, validation_alias="ML_WALK_FORWARD_TEST_SIZE")

    # --- service database and scheduler -------------------------------------------------------
    database_url: str = Field("sqlite:///data/service.db", validation_alias="ML_DATABASE_URL")
    scheduler_database_url: str | None = Field(None, validation_alias="ML_SCHEDULER_DATABASE_URL")

    # --- caches (milliseconds, as in the original) --------------------------------------------
    prediction_cache_ttl_ms: int = Field(30_000, ge=0, validation_alias="ML_PREDICTION_CACHE_TTL")
    feature_cache_ttl_ms: int = Field(300_000, ge=0, validation_alias="ML_FEATURE_CACHE_TTL")
    model_status_cache_ttl_ms: int = Field(
        60_000, ge=0, validation_alias="ML_MODEL_STATUS_CACHE_TTL"
    )

    # --- training queue (milliseconds, as in the original) ------------------------------------
    # The original's setting, kept for its .env files; one training at a time is the rule here.
    max_concurrent_training: int = Field(
        1, ge=1, le=1, validation_alias="ML_MAX_CONCURRENT_TRAINING"
    )
    training_cooldown_ms: int = Field(1_800_000, ge=0, validation_alias="ML_TRAINING_COOLDOWN")
    queue_processing_interval_ms: int = Field(
        5_000, ge=100, validation_alias="ML_QUEUE_PROCESSING_INTERVAL"
    )
    training_max_attempts: int = Field(3, ge=1, le=20, validation_alias="ML_TRAINING_MAX_ATTEMPTS")
    # --- training queue: runner, retries, lease, scheduled retraining (pipelines/queue/) -------
    # The MLproject entry point each job runs; `smoke` is the cheap stand-in the queue tests use.
    training_entry_point: str = Field(
        "train", pattern=r"^[A-Za-z0-9_]+$", validation_alias="ML_TRAINING_ENTRY_POINT"
    )
    # A failed attempt is retried after base * 2**(attempt - 1), capped.
    training_retry_backoff_ms: int = Field(
        60_000, ge=0, validation_alias="ML_TRAINING_RETRY_BACKOFF"
    )
    training_retry_backoff_max_ms: int = Field(
        1_800_000, ge=0, validation_alias="ML_TRAINING_RETRY_BACKOFF_MAX"
    )
    # How long the dispatcher's database lease lasts without renewal: a crashed scheduler's
    # successor waits at most this long before it recovers the crashed one's training.
    scheduler_lease_ms: int = Field(30_000, ge=500, validation_alias="ML_SCHEDULER_LEASE")
    # --- retraining policy (pipelines/queue/policy.py; docs/queue.md, "Retraining policy") ---
    # Enqueue retrainings when a production version is stale, when enough new data arrived,
    # or when its live figures drift below the naive baselines.
    retrain_policy: bool = Field(True, validation_alias="ML_RETRAIN_POLICY")
    # Retrain once this many hours of new candles exist since the last training's data end:
    # one number for every pair (`24`), or per pair (`BTC=24,ETH=12`, JSON); unnamed pairs get
    # DEFAULT_RETRAIN_INTERVAL_HOURS.
    retrain_interval_hours: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, validation_alias="ML_RETRAIN_INTERVAL_HOURS"
    )
    # How often the policy looks (ms).
    policy_interval_ms: int = Field(
        60_000, ge=100, le=86_400_000, validation_alias="ML_POLICY_INTERVAL"
    )
    # Drift (pipelines/lifecycle/drift.py): a one-sided CUSUM of a served version's per-row log
    # loss minus the base rate's, standardised; reference k and threshold h in standard
    # deviations, after a warm-up of rows that only estimate the scale. The defaults' false
    # alarms and delays: `python -m bench.drift_alarms` (docs/service.md, "Drift").
    drift_reference: float = Field(0.05, ge=0, le=5, validation_alias="ML_DRIFT_REFERENCE")
    drift_threshold: float = Field(60.0, gt=0, le=10_000, validation_alias="ML_DRIFT_THRESHOLD")
    drift_warmup: int = Field(168, ge=24, le=100_000, validation_alias="ML_DRIFT_WARMUP")
    # --- training queue: bounds and retention (docs/queue.md) --------------------------------
    # An attempt running longer than this is killed and fails ("timed out after ...").
    training_timeout_ms: int = Field(21_600_000, ge=1_000, validation_alias="ML_TRAINING_TIMEOUT")
    # Queued jobs at most; an enqueue beyond it is refused (HTTP 429).
    max_queued_jobs: int = Field(100, ge=1, validation_alias="ML_MAX_QUEUED_JOBS")
    # Ended jobs (with their attempts) and training logs older than this are deleted.
    job_retention_hours: float = Field(720, gt=0, validation_alias="ML_JOB_RETENTION_HOURS")

    @field_validator("retrain_interval_hours", mode="before")
    @classmethod
    def _parse_retrain_intervals(cls, value: object, info: ValidationInfo) -> object:
        from pipelines.queue.intervals import parse_retrain_intervals

        return parse_retrain_intervals(value, pairs=info.data.get("pairs"))

    # --- storage ------------------------------------------------------------------------------
    storage_max_age_hours: float = Field(168, gt=0, validation_alias="ML_STORAGE_MAX_AGE_HOURS")

    # --- prediction service (service/) --------------------------------------------------------
    # How often each API process asks the registry where `production` points; a finished
    # training in this process triggers a refresh at once.
    model_refresh_interval_ms: int = Field(
        30_000, ge=100, validation_alias="ML_MODEL_REFRESH_INTERVAL"
    )
    # Run the training scheduler inside the API process (`tbml serve --no-scheduler` for a
    # replica that only enqueues while `tbml worker` dispatches).
    run_scheduler: bool = Field(True, validation_alias="ML_RUN_SCHEDULER")
    # How often realised outcomes are filled into the prediction history.
    outcome_fill_interval_ms: int = Field(
        60_000, ge=100, validation_alias="ML_OUTCOME_FILL_INTERVAL"
    )
    # Largest request body accepted (POST /api/predictions/{pair} with candles), in bytes.
    max_body_bytes: int = Field(2_000_000, ge=1024, validation_alias="ML_MAX_BODY_BYTES")
    max_request_candles: int = Field(5_000, ge=10, validation_alias="ML_MAX_REQUEST_CANDLES")
    # Open `/ws/predictions` connections at most (one more is refused with close code 1013).
    ws_max_connections: int = Field(100, ge=1, le=100_000, validation_alias="ML_WS_MAX_CONNECTIONS")

    # --- first run (`tbml up`, `make run`) ----------------------------------------------------
    # Pairs without a production model get a short "bootstrap" training, so a fresh clone
    # serves real models within minutes on two cores; `make train PAIR=BTC` trains fully.
    bootstrap_epochs: int = Field(3, ge=1, le=1000, validation_alias="ML_BOOTSTRAP_EPOCHS")
    # Newest candles a bootstrap training uses (0 = all).
    bootstrap_max_rows: int = Field(6_000, ge=0, validation_alias="ML_BOOTSTRAP_MAX_ROWS")

    @field_validator("pairs", mode="before")
    @classmethod
    def _split_pairs(cls, value: object) -> object:
        value = _csv(value)
        if isinstance(value, list):
            return [str(item).upper() for item in value]
        return value

    @field_validator("mlflow_ui_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        text = value.strip().rstrip("/")
        scheme, _, rest = text.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or any(c.isspace() for c in text):
            raise ValueError(
                f"ML_MLFLOW_UI_URL must be an http:// or https:// address, got {value!r}"
            )
        return text

    @field_validator("enabled_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        return _csv(value)

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self.data_dir = resolve_path(self.data_dir)
        self.bundled_data_dir = resolve_path(self.bundled_data_dir)
        self.artifact_root = resolve_path(self.artifact_root)
        self.tracking_uri = resolve_sqlite_url(self.tracking_uri)
        self.database_url = resolve_sqlite_url(self.database_url)
        if self.scheduler_database_url is not None:
            self.scheduler_database_url = resolve_sqlite_url(self.scheduler_database_url)
        if self.sell_threshold >= self.buy_threshold:
            raise ValueError(
                f"ML_SELL_THRESHOLD ({self.sell_threshold}) must be below "
                f"ML_BUY_THRESHOLD ({self.buy_threshold})"
            )
        return self

    @model_validator(mode="after")
    def _lifecycle_fits(self) -> Settings:
        """Derive ML_MODEL_MAX_AGE_HOURS and ML_CHALLENGER_MAX_HOURS when unset, so that they
        fit the timeframe and ML_CHALLENGER_MIN_OUTCOMES; refuse set values that cannot."""
        from pipelines.candles.timeframes import timeframe_delta
        from pipelines.lifecycle import staleness

        try:
            step = timeframe_delta(self.timeframe).total_seconds() / 3600
        except ValueError:
            return self  # refused, naming the timeframe, where candles are read
        outcomes, horizon = self.challenger_min_outcomes, self.horizon
        training = self.training_timeout_ms / 3_600_000
        if "model_max_age_hours" not in self.model_fields_set:
            self.model_max_age_hours = staleness.default_max_age_hours(
                min_outcomes=outcomes,
                horizon=horizon,
                timeframe_hours=step,
                training_hours=training,
            )
        if "challenger_max_hours" not in self.model_fields_set:
            self.challenger_max_hours = staleness.default_challenger_max_hours(
                min_outcomes=outcomes, horizon=horizon, timeframe_hours=step
            )
        problems = staleness.misfits(
            max_age_hours=self.model_max_age_hours,
            challenger_max_hours=self.challenger_max_hours,
            min_outcomes=outcomes,
            horizon=horizon,
            timeframe=self.timeframe,
            timeframe_hours=step,
            training_hours=training,
            shadow=self.promotion_mode == "shadow",
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def retrain_interval_for(self, pair: str) -> float:
        """Hours of new data that call for a retraining of `pair`."""
        return self.retrain_interval_hours.get(pair.upper(), DEFAULT_RETRAIN_INTERVAL_HOURS)

    @property
    def candles_dir(self) -> Path:
        """Where ingestion writes candles; the bundled files are never written to."""
        return self.data_dir / "candles"

    # --- what one client may hold of `tbml serve` (service/bounds.py; docs/service.md,
    # "Bounded clients") ------------------------------------------------------------------------
    # Largest WebSocket message a client may send to the read-only `/ws/predictions`, in bytes;
    # a larger one closes the connection with code 1009 before its payload is read.
    ws_max_frame_bytes: int = Field(
        4096, ge=125, le=1_048_576, validation_alias="ML_WS_MAX_FRAME_BYTES"
    )
    # Open connections at most, HTTP and WebSocket together (lowered to fit `ulimit -n`). One
    # more closes the oldest idle or half-sent connection; when all are busy it is answered
    # `/livez` only (503 otherwise). Unset: 200, or ML_WS_MAX_CONNECTIONS + 100 when larger.
    max_connections: int = Field(200, ge=2, le=1_000_000, validation_alias="ML_MAX_CONNECTIONS")
    # Seconds a connection has to send a request's line and headers (408 and closed after).
    header_timeout_s: float = Field(10.0, gt=0, le=300, validation_alias="ML_HEADER_TIMEOUT_S")
    # Seconds a request's body has to arrive once its headers have (closed after).
    body_timeout_s: float = Field(30.0, gt=0, le=3600, validation_alias="ML_BODY_TIMEOUT_S")
    # Seconds an idle keep-alive connection stays open between two requests.
    keepalive_timeout_s: int = Field(5, ge=1, le=300, validation_alias="ML_KEEPALIVE_TIMEOUT_S")

    @model_validator(mode="after")
    def _connections_fit(self) -> Settings:
        """Leave room for requests beside every stream client ML_WS_MAX_CONNECTIONS allows."""
        if "max_connections" not in self.model_fields_set:
            self.max_connections = max(200, self.ws_max_connections + 100)
        elif self.max_connections <= self.ws_max_connections:
            raise ValueError(
                f"ML_MAX_CONNECTIONS ({self.max_connections}) must exceed ML_WS_MAX_CONNECTIONS "
                f"({self.ws_max_connections}): each stream client holds a connection, and "
                "requests need some too"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings(...)` instead."""
    return Settings()
