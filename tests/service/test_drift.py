"""The drift chore in the API process: a served version worse than the base rate on its
realised candles drifts (health degraded), and a training is queued only when the retraining
trigger says due, never over a challenger being decided (a real one, loaded by the service)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.lifecycle.registry import set_challenger
from service.predictor import PredictionRecord
from tests.conftest import write_newer_candles
from tests.service.conftest import (
    LiveServer,
    Trained,
    make_settings,
    register_variant,
    registry,
)

NEW_HOURS = 160  # candles newer than the tiny models' data: rows they never learnt


def _drifting_server(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained, *, challenger: bool
) -> tuple[LiveServer, str | None]:
    settings = make_settings(
        tmp_path, trained, drift_warmup=48, gate_min_rows=50, challenger_interval_ms=600_000
    )
    write_newer_candles(settings.data_dir, pair="BTC", hours=NEW_HOURS)
    version = None
    if challenger:
        version = register_variant(settings, tmp_path)
        now = int(time.time() * 1000)
        set_challenger(registry(settings), name="BTC-lstm", version=version, now_ms=now)
    server = serve(settings)
    server.state.models.refresh()
    state = server.state
    production = state.models.get("BTC", "lstm")
    assert production is not None
    candles = state.store.load("BTC", "1h")
    closes = candles["close"].to_numpy()
    records = []
    for i in range(len(candles) - NEW_HOURS, len(candles) - 1):
        p = 0.1 if closes[i + 1] > closes[i] else 0.9  # confidently wrong, tie or not
        records.append(_record(production.version, candles.index[i], p))
    state.history.record(records)
    state.history.fill_outcomes(store=state.store, timeframe="1h")
    return server, version


def _record(version: str, stamp: pd.Timestamp, p: float) -> PredictionRecord:
    return PredictionRecord(
        pair="BTC",
        model_type="lstm",
        model_version=version,
        candle_time=stamp,
        horizon=1,
        probability=p,
        direction="up" if p >= 0.5 else "down",
        signal="HOLD",
        unproven=False,
        created_at=int(time.time() * 1000),
    )


def _drift(server: LiveServer) -> dict[str, Any]:
    health = server.client.get("/api/health").json()
    entry: dict[str, Any] = {(d["pair"], d["modelType"]): d for d in health["drift"]}[
        ("BTC", "lstm")
    ]
    entry["status"] = health["status"]
    return entry


def _queued(server: LiveServer) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = server.client.get("/api/training/queue").json()["queue"]["queued"][
        "jobs"
    ]
    return jobs


def test_a_version_worse_than_the_base_rate_drifts_and_is_retrained_once_per_alarm(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    server, _ = _drifting_server(serve, tmp_path, trained, challenger=False)

    server.state.check_drift()

    drift = _drift(server)
    assert drift["drifting"] is True
    assert drift["bestBaseline"] == "base_rate"
    assert drift["alarms"] >= 1
    assert drift["rows"] >= NEW_HOURS - 2  # ties are no rows
    assert drift["interval"][0] > 0
    assert drift["status"] == "degraded"
    queued = _queued(server)
    assert [(j["pair"], j["requestedBy"]) for j in queued] == [("BTC", "drift")]
    assert "drifts" in queued[0]["reason"]
    assert "CUSUM" in queued[0]["reason"]
    server.state.check_drift()  # the same alarm: asked once, not again
    assert len(_queued(server)) == 1
    assert _drift(server)["queuedFor"] == drift["lastAlarm"]


def test_a_drift_alarm_never_supersedes_a_challenger_being_decided(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    server, version = _drifting_server(serve, tmp_path, trained, challenger=True)
    challenger = server.state.models.challenger("BTC", "lstm")
    assert challenger is not None  # a real version, loaded by the service
    assert challenger.version == version

    server.state.check_drift()

    drift = _drift(server)
    assert drift["drifting"] is True
    assert _queued(server) == []
    assert f"challenger version {version} is being decided" in drift["decision"]
    assert "queuedFor" not in drift
