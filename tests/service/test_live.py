"""A new candle is a new prediction, computed at once and pushed on `/ws/predictions`; every
answer says how old its candle and its model are, and a stale one holds its signal."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pipelines.candles.validate import read_candle_file
from pipelines.lifecycle.registry import mark_validated
from service.live import CLIENT_QUEUE, Subscriber
from service.predictor import PredictionRecord
from tests.conftest import BUNDLED, write_newer_candles
from tests.service.conftest import LiveServer, Trained, make_settings, registry, wait_until

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


def _crossed(serve: Callable[..., LiveServer]) -> tuple[dict[str, float], float]:
    """Thresholds that the tiny BTC model's probability for the store's newest candle crosses
    (and that probability), so its answer is BUY or SELL and only a stale override can make it
    HOLD (the magnitude gate is off: its holds are tested in routes/test_predictions.py)."""
    p = float(serve().client.get("/api/predictions/BTC").json()["prediction"]["prediction"])
    assert p != 0.5
    if p > 0.5:
        crossed = {"buy_threshold": max(0.5000001, (0.5 + p) / 2), "sell_threshold": 0.4999999}
    else:
        crossed = {"buy_threshold": 0.5000001, "sell_threshold": min(0.4999999, (0.5 + p) / 2)}
    return {**crossed, "move_gate": False}, p


def test_a_prediction_from_an_old_candle_is_stale_and_holds_its_signal(
    serve: Callable[..., LiveServer],
) -> None:
    crossed, p = _crossed(serve)
    fresh = serve(serve_unproven=True, **crossed).client.get("/api/predictions/BTC").json()
    assert fresh["stale"] is False
    assert fresh["prediction"]["signal"] in {"BUY", "SELL"}

    server = serve(stale_after=2, serve_unproven=True, **crossed)
    body = server.client.get("/api/predictions/BTC").json()
    closed = _ms(NEWEST_BUNDLED) + 3_600_000
    assert body["stale"] is True
    assert body["candleAgeMs"] >= int(time.time() * 1000) - closed - 5_000
    assert body["prediction"]["prediction"] == p
    assert body["prediction"]["signal"] == "HOLD"
    assert body["holdReasons"] == ["stale_candle"]
    assert "ML_STALE_AFTER" in body["reason"]
    # The model's data ends where the bundled candles end: not a stale model.
    assert body["modelDataEnd"] is not None
    assert body["modelStale"] is False
    assert body["modelAgeHours"] < 168
    health = server.client.get("/api/health").json()
    assert "BTC" in health["stale"]["feeds"]
    assert health["status"] == "degraded"


def test_serve_stale_keeps_the_models_signal(serve: Callable[..., LiveServer]) -> None:
    crossed, _ = _crossed(serve)
    server = serve(stale_after=2, serve_stale=True, serve_unproven=True, **crossed)
    body = server.client.get("/api/predictions/BTC").json()
    assert body["stale"] is True
    assert body["prediction"]["signal"] in {"BUY", "SELL"}
    assert body["holdReasons"] == []
    assert "ML_STALE_AFTER" in body["reason"]


def test_a_model_older_than_the_max_age_is_stale_and_holds_a_signal_it_would_give(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    write_newer_candles(tmp_path / "data", pair="BTC", hours=5)
    crossed, p = _crossed(serve)  # the model's age (5 h) is within the default bound here
    # Offline promotion: no live verdict keeps a version fresh, so any bound is allowed.
    server = serve(model_max_age_hours=1, promotion_mode="offline", serve_unproven=True, **crossed)
    body = server.client.get("/api/predictions/BTC").json()
    assert body["prediction"]["prediction"] == p
    assert body["modelStale"] is True
    assert body["modelAgeHours"] >= 5
    assert body["prediction"]["signal"] == "HOLD"
    assert "ML_MODEL_MAX_AGE_HOURS" in body["reason"]
    health = server.client.get("/api/health").json()
    stale = {(m["pair"], m["modelType"]) for m in health["stale"]["models"]}
    assert ("BTC", "lstm") in stale
    assert health["status"] == "degraded"


def test_a_model_validated_by_live_candles_counts_its_age_from_that_candle(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    """Its data ends 5 h before the newest candle, more than the bound, but a live comparison
    kept it through the newest candle: not stale, and it serves its signal."""
    newest = pd.Timestamp(write_newer_candles(tmp_path / "data", pair="BTC", hours=5))
    crossed, p = _crossed(serve)
    settings = make_settings(
        tmp_path,
        trained,
        model_max_age_hours=1,
        promotion_mode="offline",
        serve_unproven=True,
        **crossed,
    )
    mark_validated(registry(settings), name="BTC-lstm", version="1", through_ms=_ms(newest))
    server = serve(settings)
    # It starts from the local copy the first server left, then reads the registry's tags.
    wait_until(
        lambda: (
            (model := server.state.models.get("BTC", "lstm")) is not None
            and model.validated_through_ms == _ms(newest)
        )
    )

    body = server.client.get("/api/predictions/BTC").json()
    assert body["candleTime"] == _ms(newest)
    assert body["prediction"]["prediction"] == p
    assert body["modelStale"] is False
    assert body["modelAgeHours"] == 0
    assert body["prediction"]["signal"] in {"BUY", "SELL"}
    health = server.client.get("/api/health").json()
    assert health["stale"]["models"] == []


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


def test_each_recorded_candle_carries_the_shipped_logistic_scored_in_shadow(
    serve: Callable[..., LiveServer],
) -> None:
    from pipelines.features.compute import latest_features

    server = _fast(serve)
    state = server.state
    served = state.models.get("BTC", "lstm")
    assert served is not None
    assert served.bundle.baseline is not None  # a training ships its logistic baseline
    write_newer_candles(state.settings.data_dir, pair="BTC", hours=3)
    newest = NEWEST_BUNDLED + pd.Timedelta(hours=3)

    last = _ms(newest - pd.Timedelta(hours=1))  # the newest candle with a known outcome

    def realised() -> Any:
        # The watcher records the three new candles one after another: wait for all of them.
        state.history_writer.flush()
        state.history.fill_outcomes(store=state.store, timeframe="1h")
        rows = state.history.realised_rows(pair="BTC")
        return (
            rows if rows and rows[0].candle_time.size and rows[0].candle_time[-1] == last else None
        )

    (rows,) = wait_until(realised)
    assert rows.candle_time.size >= 2
    candles = state.store.load("BTC", "1h")
    bundle = served.bundle
    for stamp, shadow in zip(rows.candle_time, rows.logistic(), strict=True):
        prefix = candles.loc[: pd.Timestamp(int(stamp), unit="ms", tz="UTC")]
        window = latest_features(prefix, rows=bundle.sequence_length, spec=bundle.spec)
        expected = bundle.baseline_proba(window.to_numpy(dtype=float)[None, :, :])
        assert expected is not None
        assert shadow == pytest.approx(float(expected[0]), abs=1e-12)
