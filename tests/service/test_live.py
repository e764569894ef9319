"""A new candle is a new prediction, computed at once and pushed on `/ws/predictions`; every
answer says how old its candle and its model are, and a stale one holds its signal."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pipelines.candles.validate import read_candle_file
from service.live import CLIENT_QUEUE, Subscriber
from service.predictor import PredictionRecord
from tests.conftest import BUNDLED, write_newer_candles
from tests.service.conftest import LiveServer, wait_until

NEWEST_BUNDLED = read_candle_file(BUNDLED / "BTC-USDT_1h.csv.gz").index[-1]


def _ms(stamp: pd.Timestamp) -> int:
    return int(stamp.value // 1_000_000)


def _ws(server: LiveServer, query: str = "", **kwargs: Any) -> Any:
    return connect(f"ws://127.0.0.1:{server.port}/ws/predictions{query}", **kwargs)


def _fast(serve: Callable[..., LiveServer], **overrides: Any) -> LiveServer:
    return serve(candle_watch_interval_ms=100, **overrides)


def test_new_candles_give_each_served_model_one_prediction_each_without_a_request(
    serve: Callable[..., LiveServer],
) -> None:
    server = _fast(serve)
    history = server.state.history

    def stored() -> int:
        server.state.history_writer.flush()
        return history.count(pair="BTC")

    # The watcher computed the newest bundled candle's prediction at start: no request made.
    wait_until(lambda: stored() >= 1)
    before = stored()

    write_newer_candles(server.state.settings.data_dir, pair="BTC", hours=3)
    newest = _ms(NEWEST_BUNDLED + pd.Timedelta(hours=3))

    wait_until(
        lambda: (
            stored()
            and any(r["candleTime"] == newest for r in history.recent(pair="BTC", limit=10))
        )
    )
    # Three candles arrived in one append: BTC serves one model (lstm) here, so one
    # prediction for each of them, and none twice.
    times = [r["candleTime"] for r in history.recent(pair="BTC", limit=50)]
    new = sorted(t for t in times if t > _ms(NEWEST_BUNDLED))
    assert new == [_ms(NEWEST_BUNDLED + pd.Timedelta(hours=h)) for h in (1, 2, 3)]
    assert stored() == before + 3
    # The request after the candles' arrival is a cache hit for the newest, and records nothing.
    body = server.client.get("/api/predictions/BTC").json()
    assert body["candleTime"] == newest
    assert body["cached"] is True
    assert stored() == before + 3


def test_the_websocket_pushes_the_latest_at_once_then_each_new_candle(
    serve: Callable[..., LiveServer],
) -> None:
    server = _fast(serve)
    wait_until(lambda: server.state.predictor.latest("BTC", "lstm"))
    with _ws(server, "?pairs=BTC", open_timeout=10) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["pair"] == "BTC"
        assert first["candleTime"] == _ms(NEWEST_BUNDLED)
        write_newer_candles(server.state.settings.data_dir, pair="BTC", hours=2)
        earlier = json.loads(ws.recv(timeout=20))
        pushed = json.loads(ws.recv(timeout=20))
    # Two candles in one append: each is pushed, oldest first.
    assert earlier["candleTime"] == _ms(NEWEST_BUNDLED + pd.Timedelta(hours=1))
    assert pushed["candleTime"] == _ms(NEWEST_BUNDLED + pd.Timedelta(hours=2))
    assert set(earlier) == set(pushed)
    answer = server.client.get("/api/predictions/BTC").json()
    volatile = {"cached", "cacheAge", "responseTime", "timestamp", "candleAgeMs"}
    assert {k: v for k, v in pushed.items() if k not in volatile} == {
        k: v for k, v in answer.items() if k not in volatile
    }
    assert set(pushed) == set(answer)


def test_the_websocket_sends_only_the_pairs_asked_for(serve: Callable[..., LiveServer]) -> None:
    server = _fast(serve)
    wait_until(lambda: server.state.predictor.latest("ETH", "lstm"))
    with _ws(server, "?pairs=eth", open_timeout=10) as ws:
        pairs = {json.loads(ws.recv(timeout=10))["pair"]}
        write_newer_candles(server.state.settings.data_dir, pair="BTC", hours=1)
        write_newer_candles(server.state.settings.data_dir, pair="ETH", hours=1)
        pairs.add(json.loads(ws.recv(timeout=20))["pair"])
    assert pairs == {"ETH"}


def test_the_websocket_refuses_unknown_pairs_foreign_origins_and_too_many_clients(
    serve: Callable[..., LiveServer],
) -> None:
    server = _fast(serve, ws_max_connections=1)
    with _ws(server, "?pairs=BTC,DOGE", open_timeout=10) as ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    assert ws.close_code == 1008
    assert "DOGE" in (ws.close_reason or "")

    with (
        pytest.raises(Exception, match="403"),
        _ws(server, origin="https://evil.example", open_timeout=10),
    ):
        pass

    with _ws(server, open_timeout=10) as first:
        wait_until(lambda: server.state.hub is not None and server.state.hub.connections == 1)
        with _ws(server, open_timeout=10) as second, pytest.raises(ConnectionClosed):
            second.recv(timeout=10)
        assert second.close_code == 1013
        assert "ML_WS_MAX_CONNECTIONS" in (second.close_reason or "")
        first.ping()


def test_a_slow_client_loses_its_oldest_messages_and_never_grows_without_bound() -> None:
    subscriber = Subscriber(pairs=frozenset({"BTC"}))
    for number in range(CLIENT_QUEUE + 10):
        subscriber.offer(str(number).encode())
    assert subscriber.queue.qsize() == CLIENT_QUEUE
    assert subscriber.dropped == 10
    assert subscriber.queue.get_nowait() == b"10"  # the oldest ten went


def test_a_prediction_from_an_old_candle_is_stale_and_holds_its_signal(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve(stale_after=2, serve_unproven=True)
    body = server.client.get("/api/predictions/BTC").json()
    closed = _ms(NEWEST_BUNDLED) + 3_600_000
    assert body["stale"] is True
    assert body["candleAgeMs"] >= int(time.time() * 1000) - closed - 5_000
    assert body["prediction"]["signal"] == "HOLD"
    assert "ML_STALE_AFTER" in body["reason"]
    # The model's data ends where the bundled candles end: not a stale model.
    assert body["modelDataEnd"] is not None
    assert body["modelStale"] is False
    assert body["modelAgeHours"] < 168
    health = server.client.get("/api/health").json()
    assert "BTC" in health["stale"]["feeds"]
    assert health["status"] == "degraded"


def test_serve_stale_keeps_the_models_signal(serve: Callable[..., LiveServer]) -> None:
    server = serve(
        stale_after=2,
        serve_stale=True,
        serve_unproven=True,
        buy_threshold=0.5001,
        sell_threshold=0.4999,
    )
    body = server.client.get("/api/predictions/BTC").json()
    assert body["stale"] is True
    assert body["prediction"]["signal"] in {"BUY", "SELL"}
    assert "ML_STALE_AFTER" in body["reason"]


def test_a_model_whose_data_ends_long_before_the_newest_candle_is_stale(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve(model_max_age_hours=1, serve_unproven=True)
    write_newer_candles(server.state.settings.data_dir, pair="BTC", hours=5)
    body = server.client.get("/api/predictions/BTC").json()
    assert body["modelStale"] is True
    assert body["modelAgeHours"] >= 5
    assert body["prediction"]["signal"] == "HOLD"
    assert "ML_MODEL_MAX_AGE_HOURS" in body["reason"]
    health = server.client.get("/api/health").json()
    stale = {(m["pair"], m["modelType"]) for m in health["stale"]["models"]}
    assert ("BTC", "lstm") in stale
    assert health["status"] == "degraded"


def test_the_history_keeps_one_row_per_version_and_candle(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    record = PredictionRecord(
        pair="RVN",
        model_type="lstm",
        model_version="7",
        candle_time=pd.Timestamp("2024-01-01T00:00Z"),
        horizon=1,
        probability=0.6,
        direction="up",
        signal="HOLD",
        unproven=True,
        created_at=1,
    )
    server.state.history.record([record])
    server.state.history.record([record, record])  # a restart, or another replica
    assert server.state.history.count(pair="RVN") == 1


def test_a_version_worse_than_the_naive_baselines_is_degraded_and_retrained_for_drift(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve(drift_window=168)
    state = server.state
    version = state.models.get("BTC", "lstm")
    assert version is not None
    candles = read_candle_file(BUNDLED / "BTC-USDT_1h.csv.gz").iloc[-200:]
    closes = candles["close"].to_numpy()
    records = []
    for i, stamp in enumerate(candles.index[:-1]):
        up = closes[i + 1] > closes[i]
        p = 0.1 if up else 0.9  # confidently wrong, every time
        records.append(
            PredictionRecord(
                pair="BTC",
                model_type="lstm",
                model_version=version.version,
                candle_time=stamp,
                horizon=1,
                probability=p,
                direction="up" if p >= 0.5 else "down",
                signal="HOLD",
                unproven=False,
                created_at=int(time.time() * 1000),
            )
        )
    state.history.record(records)
    state.history.fill_outcomes(store=state.store, timeframe="1h")

    state.check_drift()

    health = server.client.get("/api/health").json()
    drift = {(d["pair"], d["modelType"]): d for d in health["drift"]}
    assert drift[("BTC", "lstm")]["drifting"] is True
    assert drift[("BTC", "lstm")]["interval"][0] > 0
    assert health["status"] == "degraded"
    queued = server.client.get("/api/training/queue").json()["queue"]["queued"]["jobs"]
    assert [(j["pair"], j["requestedBy"]) for j in queued] == [("BTC", "drift")]
    assert "drifts" in queued[0]["reason"]
    state.check_drift()  # still drifting: the queue holds one job for the slot, not two
    queued = server.client.get("/api/training/queue").json()["queue"]["queued"]["jobs"]
    assert len(queued) == 1
