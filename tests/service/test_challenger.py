"""Champion and challenger: a version admitted by the offline gate is loaded beside production,
scored in shadow on each new candle, and promoted or retired by the challenger policy on the
realised candles both versions predicted. Real registry, real history database, real uvicorn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.candles.store import CandleStore
from pipelines.lifecycle.registry import set_challenger
from pipelines.settings import Settings
from service.challenger import LiveComparison, compare
from service.history.store import RealisedRows
from service.predictor import PredictionRecord
from tests.conftest import write_newer_candles
from tests.service.conftest import (
    LiveServer,
    Trained,
    append_candle,
    edit_json,
    make_settings,
    register_variant,
    registry,
    wait_until,
)

NAME = "BTC-lstm"
HOUR_MS = 3_600_000


def _with_challenger(
    serve: Callable[..., LiveServer],
    tmp_path: Path,
    trained: Trained,
    *,
    since_ms: int | None = None,
    **overrides: Any,
) -> tuple[LiveServer, str]:
    settings = make_settings(tmp_path, trained, challenger_interval_ms=600_000, **overrides)
    version = register_variant(settings, tmp_path)
    now = int(time.time() * 1000) if since_ms is None else since_ms
    set_challenger(registry(settings), name=NAME, version=version, now_ms=now)
    server = serve(settings)
    server.state.models.refresh()
    return server, version


def test_a_challenger_is_loaded_beside_production_and_scored_in_shadow_on_each_new_candle(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    server, version = _with_challenger(serve, tmp_path, trained, candle_watch_interval_ms=100)
    state, client = server.state, server.client
    challenger = state.models.challenger("BTC", "lstm")
    assert challenger is not None
    assert challenger.version == version
    assert state.models.get("BTC", "lstm").version == "1"  # production keeps serving

    candle = append_candle(state.settings, "BTC")

    def shadowed() -> list[dict[str, Any]]:
        state.history_writer.flush()
        rows = state.history.recent(pair="BTC", limit=50, shadow=True)
        return [r for r in rows if r["candleTime"] == candle]

    rows = wait_until(shadowed, timeout=30)
    assert [r["modelVersion"] for r in rows] == [version]
    # Production's prediction of the same candle is the served one.
    served = [r for r in state.history.recent(pair="BTC", limit=50) if r["candleTime"] == candle]
    assert [(r["modelVersion"], r["shadow"]) for r in served] == [("1", False)]

    answer = client.get("/api/predictions/BTC").json()
    assert answer["modelVersion"] == "1"
    assert "shadow" not in answer
    asked = client.get("/api/predictions/BTC", params={"alias": "challenger"}).json()
    assert asked["modelVersion"] == version
    assert asked["shadow"] is True
    assert asked["alias"] == "challenger"
    assert asked["candleTime"] == candle

    history = client.get("/api/predictions/BTC/history", params={"limit": 200}).json()
    assert history["predictions"]
    assert {r["modelVersion"] for r in history["predictions"]} == {"1"}
    shadow = client.get(
        "/api/predictions/BTC/history", params={"limit": 200, "alias": "challenger"}
    ).json()
    assert {r["modelVersion"] for r in shadow["predictions"]} == {version}
    assert all(r["shadow"] for r in shadow["predictions"])

    status = client.get("/api/models/BTC/status").json()["individual"]["lstm"]
    assert status["modelInfo"]["version"] == "1"
    assert status["challenger"]["modelInfo"]["version"] == version
    assert status["challenger"]["modelInfo"]["runId"]
    comparison = status["challenger"]["comparison"]
    assert comparison["decision"] == "waiting"
    assert comparison["needed"] == 120
    assert comparison["productionVersion"] == "1"


def test_asking_a_challenger_that_does_not_exist_or_a_bad_alias_is_refused(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    server, _ = _with_challenger(serve, tmp_path, trained)
    client = server.client

    missing = client.get("/api/predictions/ETH", params={"alias": "challenger"})
    assert missing.status_code == 404
    assert "ETH has no lstm challenger" in missing.json()["error"]
    bad = client.get("/api/predictions/BTC", params={"alias": "champion"})
    assert bad.status_code == 422
    assert "'champion' is not one of 'production', 'challenger'" in bad.json()["error"]
    both = client.get("/api/predictions/BTC", params={"alias": "challenger", "ensemble": "true"})
    assert both.status_code == 422
    assert "ensemble" in both.json()["error"]
    history = client.get("/api/predictions/BTC/history", params={"alias": "champion"})
    assert history.status_code == 422


def test_a_challenger_that_cannot_load_is_reported_and_production_serves_on(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained, challenger_interval_ms=600_000)
    version = register_variant(
        settings, tmp_path, edit=lambda d: edit_json(d / "feature_spec.json", version="0" * 12)
    )
    set_challenger(registry(settings), name=NAME, version=version, now_ms=int(time.time() * 1000))
    server = serve(settings)
    server.state.models.refresh()

    assert server.state.models.challenger("BTC", "lstm") is None
    status = server.client.get("/api/models/BTC/status").json()["individual"]["lstm"]
    assert status["challenger"] is None
    assert status["challengerError"].startswith(f"version {version} failed to load")
    assert "feature" in status["challengerError"]
    assert server.client.get("/api/predictions/BTC").json()["modelVersion"] == "1"
    assert (
        server.client.get("/api/predictions/BTC", params={"alias": "challenger"}).status_code == 404
    )


def _realised(
    settings: Settings, *, rows: int, challenger: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The store's last `rows` candles with a known outcome (1 = up), and the challenger's
    probabilities for them (`challenger(outcomes)`)."""
    frame = CandleStore.from_settings(settings).load("BTC", settings.timeframe)
    close = frame["close"].to_numpy()
    up = (close[1:] > close[:-1]).astype(np.int8)
    times = frame.index[:-1][-rows:]
    outcomes = up[-rows:]
    return np.asarray(times.as_unit("ms").asi8), challenger(outcomes)


def _record(server: LiveServer, version: str, times: np.ndarray, proba: np.ndarray) -> None:
    state = server.state
    shadow = version != "1"
    state.history.record(
        [
            PredictionRecord(
                pair="BTC",
                model_type="lstm",
                model_version=version,
                candle_time=pd.Timestamp(int(t), unit="ms", tz="UTC"),
                horizon=1,
                probability=float(p),
                direction="up" if p > 0.5 else "down",
                signal="HOLD",
                unproven=False,
                created_at=int(time.time() * 1000),
                shadow=shadow,
            )
            for t, p in zip(times, proba, strict=True)
        ]
    )
    state.history.fill_outcomes(store=state.store, timeframe=state.settings.timeframe)


def _decided(
    serve: Callable[..., LiveServer],
    tmp_path: Path,
    trained: Trained,
    *,
    challenger: Callable[[np.ndarray], np.ndarray],
) -> tuple[LiveServer, str, list[LiveComparison]]:
    """A challenger and production (p = 0.5) on the store's last 72 realised candles, 60
    needed; the policy's look. `challenger(outcomes)` gives the challenger's probabilities."""
    server, version = _with_challenger(serve, tmp_path, trained, challenger_min_outcomes=60)
    times, proba = _realised(server.state.settings, rows=72, challenger=challenger)
    _record(server, "1", times, np.full(times.size, 0.5))
    _record(server, version, times, proba)
    policy = server.state.challengers
    assert policy is not None
    return server, version, policy.check()


def test_the_policy_promotes_a_challenger_not_worse_on_enough_realised_candles(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    server, version, acted = _decided(
        serve, tmp_path, trained, challenger=lambda up: np.where(up == 1, 0.6, 0.4)
    )

    assert [(c.decision, c.challenger_version) for c in acted] == [("promote", version)]
    client = registry(server.state.settings)
    model = client.get_registered_model(NAME)
    assert str(model.aliases.get("production")) == version
    assert "challenger" not in model.aliases
    assert client.get_model_version(NAME, "1").current_stage == "Archived"
    tags = client.get_model_version(NAME, version).tags
    assert tags["tbml.challenger_outcome"] == "promoted"
    assert tags["tbml.promotion"] == "promoted"
    assert tags["tbml.live_rows"] == "72"
    assert float(tags["tbml.live_delta_high"]) < 0  # significantly better
    assert "not worse than production on the 72 realised candles" in tags["tbml.challenger_reason"]
    # Promoted by live evidence: validated through the last candle compared, so not born stale.
    (comparison,) = acted
    assert comparison.last_candle_ms is not None
    assert tags["tbml.validated_through"] == str(comparison.last_candle_ms)
    assert "tbml.validated_through" not in client.get_model_version(NAME, "1").tags
    server.state.models.refresh()
    served = server.state.models.get("BTC", "lstm")
    assert served is not None
    assert served.version == version
    assert served.validated_through_ms == comparison.last_candle_ms
    assert server.state.models.challenger("BTC", "lstm") is None


def test_the_policy_retires_a_significantly_worse_challenger_and_production_stays(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    server, version, acted = _decided(
        serve, tmp_path, trained, challenger=lambda up: np.where(up == 1, 0.2, 0.8)
    )

    assert [(c.decision, c.challenger_version) for c in acted] == [("retire", version)]
    client = registry(server.state.settings)
    model = client.get_registered_model(NAME)
    assert str(model.aliases.get("production")) == "1"
    assert "challenger" not in model.aliases
    tags = client.get_model_version(NAME, version).tags
    assert tags["tbml.challenger_outcome"] == "retired"
    assert "significantly worse than production" in tags["tbml.challenger_reason"]
    assert float(tags["tbml.live_delta_low"]) > 0
    # Production kept its place on live evidence: validated through the last candle compared,
    # and the served model reads it when the challenger alias goes (no reload).
    (comparison,) = acted
    assert "tbml.validated_through" not in tags
    production_tags = client.get_model_version(NAME, "1").tags
    assert production_tags["tbml.validated_through"] == str(comparison.last_candle_ms)
    loaded = server.state.models.get("BTC", "lstm")
    assert loaded is not None
    server.state.models.refresh()
    served = server.state.models.get("BTC", "lstm")
    assert served is not None
    assert served.version == "1"
    assert served.bundle is loaded.bundle  # the same loaded model, its tag read again
    assert served.validated_through_ms == comparison.last_candle_ms
    assert server.state.models.challenger("BTC", "lstm") is None


def test_a_challenger_too_few_outcomes_waits_and_after_the_max_hours_is_retired(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    two_hundred_hours_ago = int(time.time() * 1000) - 200 * HOUR_MS
    server, version = _with_challenger(serve, tmp_path, trained, since_ms=two_hundred_hours_ago)
    policy = server.state.challengers
    assert policy is not None
    times, proba = _realised(server.state.settings, rows=10, challenger=lambda up: up * 0 + 0.5)
    _record(server, "1", times, proba)
    _record(server, version, times, proba)

    assert policy.check() == []
    waiting = policy.comparisons()[("BTC", "lstm")]
    assert waiting.decision == "waiting"
    assert waiting.rows == 10
    assert "10 of the 120 realised outcomes" in waiting.reason

    policy.settings = policy.settings.model_copy(update={"challenger_max_hours": 150.0})
    acted = policy.check()

    assert [c.decision for c in acted] == ["retire"]
    client = registry(server.state.settings)
    tags = client.get_model_version(NAME, version).tags
    assert tags["tbml.challenger_outcome"] == "retired"
    assert "more than ML_CHALLENGER_MAX_HOURS = 150" in tags["tbml.challenger_reason"]
    # Not decided on live rows: nothing is validated.
    assert "tbml.validated_through" not in client.get_model_version(NAME, "1").tags


@pytest.mark.parametrize(("old_horizon", "new_horizon", "rows"), [(1, 1, 30), (1, 2, 0)])
def test_only_candles_both_versions_predicted_for_the_same_horizon_are_compared(
    serve: Callable[..., LiveServer],
    tmp_path: Path,
    trained: Trained,
    old_horizon: int,
    new_horizon: int,
    rows: int,
) -> None:
    server, version = _with_challenger(serve, tmp_path, trained, challenger_min_outcomes=10)
    models = server.state.models
    production, challenger = models.get("BTC", "lstm"), models.challenger("BTC", "lstm")
    assert production is not None
    assert challenger is not None
    times = np.arange(40, dtype=np.int64) * HOUR_MS
    outcome = (np.arange(40) % 2).astype(np.int8)

    def realised(version: str, stamps: np.ndarray, horizon: int) -> RealisedRows:
        positions = (stamps // HOUR_MS).astype(int)
        return RealisedRows(
            model_type="lstm",
            model_version=version,
            candle_time=stamps,
            probability=np.full(stamps.size, 0.5),
            outcome=outcome[positions],
            correct=np.zeros(stamps.size, dtype=bool),
            horizon=np.full(stamps.size, horizon),
        )

    found = compare(
        [realised("1", times[:35], old_horizon), realised(version, times[5:], new_horizon)],
        production=production,
        challenger=challenger,
        settings=server.state.settings,
    )

    assert found.rows == rows
    assert found.decision == ("promote" if rows else "waiting")


def test_the_api_process_does_not_retrain_a_slot_whose_challenger_is_being_decided(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    """The retraining policy the API runs reads the model cache: production's facts (the same
    the registry gives a separate worker) and the loaded challenger, which holds the slot."""
    from pipelines.candles.store import CandleStore
    from pipelines.db import migrate
    from pipelines.queue.api import TrainingQueue
    from pipelines.queue.policy import RetrainingPolicy, registry_data_end

    server, version = _with_challenger(serve, tmp_path, trained)
    state = server.state
    settings = state.settings
    write_newer_candles(settings.data_dir, pair="BTC", hours=200)  # production is stale
    migrate(settings)
    facts = state.production_data_end("BTC", "lstm")
    assert facts is not None
    assert facts.fit_end is not None
    assert facts == registry_data_end(settings)("BTC", "lstm")
    assert state.challenger_of("BTC", "lstm") == version
    policy = RetrainingPolicy(
        settings,
        TrainingQueue(settings),
        store=CandleStore.from_settings(settings),
        production_data_end=state.production_data_end,
        challenger_of=state.challenger_of,
    )

    decision = next(d for d in policy.evaluate() if (d.pair, d.model_type) == ("BTC", "lstm"))

    assert decision.action == "skipped"
    assert decision.reason.startswith(
        f"BTC-lstm challenger version {version} is being decided on live candles"
    )
    assert "production version 1 is stale" in decision.reason
