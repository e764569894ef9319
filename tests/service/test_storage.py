"""`/api/storage/*`: statistics, a database checkpoint, retention cleanup."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from service.predictor import PredictionRecord
from tests.service.conftest import (
    LiveServer,
    Trained,
    edit_json,
    make_settings,
    register_variant,
    set_production,
)


def test_stats_report_database_rows_mlruns_registry_and_caches(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    server.client.get("/api/predictions/BTC")
    server.client.get("/api/predictions/BTC")
    server.state.history_writer.flush()

    body = server.client.get("/api/storage/stats").json()

    storage = body["storage"]
    assert storage["database"]["dialect"] == "sqlite"
    assert storage["database"]["tables"]["prediction_history"] == 1
    assert storage["database"]["tables"]["training_jobs"] == 0
    assert storage["database"]["sizeBytes"] > 0
    assert storage["mlruns"]["sizeBytes"] > 0
    assert storage["mlruns"]["files"] > 0
    assert storage["registry"] == {
        "registeredModels": 3,
        "versions": 3,
        "production": {"BTC-gru": "1", "BTC-lstm": "1", "ETH-lstm": "1"},
    }
    assert {"pair": "BTC", "modelType": "lstm", "version": "1"} in storage["modelCache"]["loaded"]
    assert storage["modelCache"]["sizeBytes"] > 0
    assert storage["predictions"]["count"] == 1
    performance = body["performance"]
    assert performance["predictionCacheSize"] == 1
    assert performance["cacheHits"]["predictions"] == 1
    assert performance["cacheMisses"]["predictions"] == 1
    assert body["trainingQueue"]["queued"]["count"] == 0


def test_save_checkpoints_the_database_into_a_readable_backup(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    server.client.get("/api/predictions/BTC")
    server.state.history_writer.flush()

    body = server.client.post("/api/storage/save").json()

    assert body["saved"] is True
    assert body["checkpoint"]["busy"] is False
    backup = Path(body["backup"]["path"])
    assert backup.parent == server.state.settings.data_dir / "backups"
    with sqlite3.connect(backup) as connection:
        (rows,) = connection.execute("SELECT count(*) FROM prediction_history").fetchone()
    assert rows == 1


def _record(pair: str, created_at: int) -> PredictionRecord:
    # History keeps one prediction per (pair, model, version, candle): each record its own candle.
    return PredictionRecord(
        pair=pair,
        model_type="lstm",
        model_version="1",
        candle_time=pd.Timestamp(created_at, unit="ms", tz="UTC").floor("h"),
        horizon=1,
        probability=0.6,
        direction="up",
        signal="HOLD",
        unproven=False,
        created_at=created_at,
    )


def test_cleanup_drops_old_history_only(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    now = int(time.time() * 1000)
    server.state.history.record(
        [
            _record("BTC", now - 3 * 3_600_000),
            _record("ETH", now - 2 * 3_600_000),
            _record("BTC", now - 60_000),
        ]
    )

    body = server.client.post("/api/storage/cleanup", json={"maxAgeHours": 1.5}).json()

    assert body["predictionsDeleted"] == 2
    assert server.state.history.count() == 1


def test_cleanup_never_deletes_a_production_version_copy(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    server = serve(settings)
    models = server.state.models
    # Version 2 replaces 1; then version 3 becomes production but is refused (other features),
    # so 2 keeps serving while 3 is production: 1 is the only stale copy.
    two = register_variant(settings, tmp_path)
    set_production(settings, "BTC-lstm", two)
    models.refresh()
    three = register_variant(
        settings, tmp_path, edit=lambda d: edit_json(d / "feature_spec.json", version="0" * 12)
    )
    set_production(settings, "BTC-lstm", three)
    models.refresh()
    assert models.get("BTC", "lstm").version == "2"
    copies = models.cache_dir / "BTC-lstm"
    assert sorted(p.name for p in copies.iterdir()) == ["1", "2", "3"]

    body = server.client.post("/api/storage/cleanup", json={"maxAgeHours": 24}).json()

    assert body["modelCopiesDeleted"] == ["BTC-lstm/1"]
    assert sorted(p.name for p in copies.iterdir()) == ["2", "3"]
    assert "BTC-lstm/3" in body["kept"]
    assert server.client.get("/api/predictions/BTC").json()["modelVersion"] == "2"


def test_cleanup_with_a_bad_age_is_422_and_deletes_nothing(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    server.state.history.record([_record("BTC", 1)])

    response = server.client.post("/api/storage/cleanup", json={"maxAgeHours": -1})

    assert response.status_code == 422
    assert "maxAgeHours" in response.json()["error"]
    assert server.state.history.count() == 1


def test_asking_for_stats_repeatedly_walks_the_stores_once(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    reader = server.state.models.reader
    calls: list[int] = []
    real = reader.summary

    def counted() -> object:
        calls.append(1)
        return real()

    reader.summary = counted  # type: ignore[method-assign]
    bodies = [server.client.get("/api/storage/stats").json() for _ in range(5)]

    assert len(calls) == 1
    assert all(b["storage"]["registry"] == bodies[0]["storage"]["registry"] for b in bodies)
    # What changes from request to request is still read fresh.
    server.client.get("/api/predictions/BTC")
    assert server.client.get("/api/storage/stats").json()["performance"]["predictionCacheSize"] == 1
