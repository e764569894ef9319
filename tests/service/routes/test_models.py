"""`GET /api/models/{pair}/status`: served version, test metrics, live accuracy, training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.service.conftest import LiveServer, Trained, append_candle, make_settings, wait_until


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
    assert live["liveAccuracy"] == {
        "1": {
            "predictions": 1,
            "correct": int(direction == "up"),
            "accuracy": float(direction == "up"),
        }
    }
