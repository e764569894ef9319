"""`GET /api/models/{pair}/status`: served version, test metrics, live accuracy, training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipelines.features.spec import default_spec
from pipelines.lifecycle.baselines import NAIVE_BASELINES
from pipelines.lifecycle.live import live_figures
from service.predictor import PredictionRecord
from service.schemas import ModelStatus
from tests.service.conftest import (
    LiveServer,
    Trained,
    append_candle,
    bundled_candles,
    make_settings,
    wait_until,
)
from tests.service.test_openapi import assert_described


def test_status_names_the_served_version_its_test_metrics_and_training(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    body = server.client.get("/api/models/BTC/status").json()

    lstm = body["individual"]["lstm"]
    assert set(body["individual"]) == {"lstm"}
    assert lstm["hasModel"] is True
    assert lstm["status"]["state"] == "loaded"
    info = lstm["modelInfo"]
    assert info["name"] == "BTC-lstm"
    assert info["version"] == "1"
    assert info["sequenceLength"] == 12
    assert info["minimumCandles"] > 12
    assert 0.0 <= info["testMetrics"]["accuracy"] <= 1.0
    assert "logistic" in info["baselineMetrics"]
    assert lstm["liveAccuracy"] == {}
    assert lstm["training"]["allowed"] is True
    assert body["featureCount"] == info["featureCount"]
    assert body["trainingQueue"]["queued"]["count"] == 0
    assert body["cached"] is False


def test_status_of_a_pair_without_model_says_so(serve: Callable[..., LiveServer]) -> None:
    body = serve().client.get("/api/models/RVN/status").json()

    assert body["individual"]["lstm"]["hasModel"] is False
    assert body["individual"]["lstm"]["status"]["state"] == "no_production_model"
    assert body["featureCount"] is None


def test_cached_status_still_shows_a_training_queued_since(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    server.client.get("/api/models/BTC/status")
    job = server.client.post("/api/train/BTC/lstm").json()["jobId"]

    body = server.client.get("/api/models/BTC/status").json()

    assert body["cached"] is True
    assert body["individual"]["lstm"]["training"]["allowed"] is False
    assert body["trainingQueue"]["queued"]["jobs"][0]["id"] == job


def test_realised_outcome_is_filled_and_counts_in_live_accuracy(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained, outcome_fill_interval_ms=200)
    server = serve(settings)
    made = server.client.get("/api/predictions/BTC").json()
    server.state.history_writer.flush()
    direction = made["prediction"]["direction"]

    append_candle(settings, "BTC", close_factor=1.02)  # the next close ends above: "up"

    def filled() -> dict[str, object] | None:
        rows = server.client.get("/api/predictions/BTC/history").json()["predictions"]
        return rows[0] if rows[0]["outcome"] is not None else None

    row = wait_until(filled, timeout=30)
    assert row["candleTime"] == made["candleTime"]
    assert row["outcome"] == "up"
    assert row["correct"] is (direction == "up")
    live = server.client.get("/api/models/BTC/status").json()["individual"]["lstm"]
    figures = live["liveAccuracy"]["1"]
    # The original three fields, as before; the new ones beside them.
    assert {k: figures[k] for k in ("predictions", "correct", "accuracy")} == {
        "predictions": 1,
        "correct": int(direction == "up"),
        "accuracy": float(direction == "up"),
    }
    assert (figures["firstCandle"], figures["lastCandle"]) == (row["candleTime"],) * 2
    assert figures["versusBaseline"]["rows"] == 1


def test_status_reports_live_figures_with_intervals_and_baselines_over_http(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    state = server.state
    candles = state.store.load("BTC", state.settings.timeframe)
    close = candles["close"].to_numpy()
    positions = range(len(candles) - 121, len(candles) - 1)
    # Modestly right: 0.6 on the direction that came.
    records = []
    for i in positions:
        p = 0.6 if close[i + 1] > close[i] else 0.4
        records.append(
            PredictionRecord(
                pair="BTC",
                model_type="lstm",
                model_version="1",
                candle_time=candles.index[i],
                horizon=1,
                probability=p,
                direction="up" if p >= 0.5 else "down",
                signal="HOLD",
                unproven=False,
                created_at=1_000 + i,
            )
        )
    state.history.record(records)
    state.history.fill_outcomes(store=state.store, timeframe=state.settings.timeframe)

    body = server.client.get("/api/models/BTC/status").json()

    assert_described(ModelStatus, body)
    live = body["individual"]["lstm"]["liveAccuracy"]
    expected = live_figures(
        state.history.realised_rows(pair="BTC"),
        state.store,
        pair="BTC",
        timeframe=state.settings.timeframe,
    )
    assert [f.to_json() for f in expected] == [live["1"]]
    figures = live["1"]
    assert (figures["predictions"], figures["correct"], figures["accuracy"]) == (120, 120, 1.0)
    assert figures["interval"]["method"] == "wilson"
    assert figures["interval"]["low"] < 1.0 == figures["interval"]["high"]
    assert figures["logLoss"]["value"] == pytest.approx(-np.log(0.6))
    assert figures["logLoss"]["low"] <= figures["logLoss"]["value"] <= figures["logLoss"]["high"]
    assert set(figures["baselines"]) == set(NAIVE_BASELINES)
    assert figures["baselines"]["coin"]["logLoss"] == pytest.approx(np.log(2))
    assert figures["versusBaseline"]["rows"] == 120
    assert figures["versusBaseline"]["verdict"] == "better"


def test_predictions_from_posted_candles_never_enter_live_figures(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained, outcome_fill_interval_ms=200)
    server = serve(settings)
    history = server.state.history
    # The store's own newest candles, posted by a client: were the prediction recorded, the
    # next candle would settle it like the service's own.
    candles = bundled_candles("BTC").iloc[-(default_spec().lookback + 12) :]
    rows = [
        [int(stamp.value // 1_000_000), *(float(v) for v in row)]
        for stamp, row in zip(candles.index, candles.to_numpy(), strict=True)
    ]
    posted = server.client.post("/api/predictions/BTC", json={"candles": rows}).json()
    assert posted["source"] == "request"
    server.state.history_writer.flush()
    assert history.count(pair="BTC") == 0

    made = server.client.get("/api/predictions/BTC").json()
    assert made["candleTime"] == posted["candleTime"]
    server.state.history_writer.flush()
    append_candle(settings, "BTC", close_factor=1.02)
    wait_until(lambda: history.realised_rows(pair="BTC"), timeout=30)

    live = server.client.get("/api/models/BTC/status").json()["individual"]["lstm"]
    assert history.count(pair="BTC") == 1
    assert live["liveAccuracy"]["1"]["predictions"] == 1
    assert live["liveAccuracy"]["1"]["versusBaseline"]["rows"] == 1
