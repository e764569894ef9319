"""`/api/predictions/...` on a real uvicorn: shape, caching, fallback, unproven, POST, history."""

from __future__ import annotations

import http.client
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.features.spec import default_spec
from tests.service.conftest import (
    LiveServer,
    Trained,
    append_candle,
    bundled_candles,
    edit_json,
    make_settings,
    register_variant,
    set_production,
)

# The original's five fields, and the magnitude forecast beside them.
PREDICTION_KEYS = {"prediction", "confidence", "direction", "signal", "move", "modelType"}


def _ms(stamp: Any) -> int:
    return int(stamp.value // 1_000_000)


def test_prediction_has_the_original_shape_and_names_version_and_candle(
    shared: LiveServer,
) -> None:
    response = shared.client.get("/api/predictions/BTC")

    assert response.status_code == 200
    body = response.json()
    assert set(body["prediction"]) == PREDICTION_KEYS
    p = body["prediction"]["prediction"]
    assert 0.0 <= p <= 1.0
    assert body["prediction"]["confidence"] == pytest.approx(max(p, 1 - p), abs=1e-6)
    assert body["prediction"]["direction"] == ("up" if p >= 0.5 else "down")
    assert body["prediction"]["modelType"] == "lstm"
    assert 0.0 <= body["prediction"]["move"] <= 1.0  # every new version ships the head
    assert body["modelVersion"] == "1"
    assert body["candleTime"] == _ms(bundled_candles("BTC").index[-1])
    assert body["pair"] == "BTC"
    assert body["fallback"] is False
    assert isinstance(body["cached"], bool)
    assert isinstance(body["cacheAge"], int)
    assert isinstance(body["responseTime"], float)
    assert isinstance(body["timestamp"], int)


def test_lowercase_and_quoted_pairs_name_the_same_pair(shared: LiveServer) -> None:
    for spelling in ("btc", "BTC-USDT", "btc_usdt"):
        body = shared.client.get(f"/api/predictions/{spelling}").json()
        assert body["pair"] == "BTC"
        assert body["modelVersion"] == "1"


def test_second_request_is_answered_from_the_cache_and_counted(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    first = server.client.get("/api/predictions/BTC").json()
    second = server.client.get("/api/predictions/BTC").json()
    health = server.client.get("/api/health").json()

    assert first["cached"] is False
    assert first["cacheAge"] == 0
    assert second["cached"] is True
    assert second["cacheAge"] >= 0
    assert second["prediction"] == first["prediction"]
    assert health["performance"]["cacheHits"]["predictions"] == 1
    assert health["performance"]["cacheMisses"]["predictions"] == 1


def test_new_candle_is_never_answered_from_the_cached_entry(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    server = serve(settings)
    before = server.client.get("/api/predictions/BTC").json()
    assert server.client.get("/api/predictions/BTC").json()["cached"] is True

    appended = append_candle(settings, "BTC")
    after = server.client.get("/api/predictions/BTC").json()

    assert after["cached"] is False
    assert after["candleTime"] == appended
    assert after["candleTime"] > before["candleTime"]


def test_new_production_version_is_never_answered_from_the_cached_entry(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    server = serve(settings)
    server.client.get("/api/predictions/BTC")
    assert server.client.get("/api/predictions/BTC").json()["cached"] is True

    version = register_variant(settings, tmp_path)
    set_production(settings, "BTC-lstm", version)
    server.state.models.refresh()
    after = server.client.get("/api/predictions/BTC").json()

    assert after["cached"] is False
    assert after["modelVersion"] == version == "2"


def test_model_query_picks_the_model_type(shared: LiveServer) -> None:
    body = shared.client.get("/api/predictions/BTC", params={"model": "gru"}).json()

    assert body["prediction"]["modelType"] == "gru"
    assert body["modelVersion"] == "1"
    assert body["fallback"] is False


def test_ensemble_averages_the_pair_production_models(shared: LiveServer) -> None:
    lstm = shared.client.get("/api/predictions/BTC", params={"model": "lstm"}).json()
    gru = shared.client.get("/api/predictions/BTC", params={"model": "gru"}).json()
    body = shared.client.get("/api/predictions/BTC", params={"ensemble": "true"}).json()

    expected = (lstm["prediction"]["prediction"] + gru["prediction"]["prediction"]) / 2
    assert body["ensemble"] is True
    assert body["prediction"]["modelType"] == "ensemble"
    assert body["prediction"]["prediction"] == pytest.approx(expected, abs=2e-6)
    assert body["modelVersion"] == {"lstm": "1", "gru": "1"}
    assert body["models"]["lstm"]["prediction"] == lstm["prediction"]["prediction"]
    assert body["models"]["gru"]["prediction"] == gru["prediction"]["prediction"]


def test_pair_without_production_model_gets_a_neutral_fallback_with_reason(
    shared: LiveServer,
) -> None:
    body = shared.client.get("/api/predictions/XMR").json()

    assert body["fallback"] is True
    assert body["reason"] == "XMR-lstm has no version aliased production"
    assert body["modelVersion"] is None
    assert body["prediction"] == {
        "prediction": 0.5,
        "confidence": 0.0,
        "direction": "neutral",
        "signal": "HOLD",
        "move": None,
        "modelType": "lstm",
    }
    assert body["holdReasons"] == ["no_model"]
    assert body["candleTime"] == _ms(bundled_candles("XMR").index[-1])


def test_model_type_not_enabled_falls_back_naming_the_setting(shared: LiveServer) -> None:
    body = shared.client.get("/api/predictions/BTC", params={"model": "cnn"}).json()

    assert body["fallback"] is True
    assert "ML_ENABLED_MODELS" in body["reason"]
    assert body["prediction"]["modelType"] == "cnn"


def test_all_pairs_are_predicted_in_one_answer(shared: LiveServer) -> None:
    body = shared.client.get("/api/predictions").json()

    assert body["count"] == 4
    assert set(body["predictions"]) == {"BTC", "ETH", "XMR", "RVN"}
    assert body["predictions"]["ETH"]["modelVersion"] == "1"
    assert body["predictions"]["RVN"]["fallback"] is True


def _tight_thresholds(**overrides: Any) -> dict[str, Any]:
    # Every probability but exactly 0.5 gives BUY or SELL, so HOLD can only come from the gate
    # under test (the magnitude gate is off unless a test turns it on).
    return {
        "buy_threshold": 0.5000001,
        "sell_threshold": 0.4999999,
        "move_gate": False,
        **overrides,
    }


def _variant_serving(
    tmp_path: Path, trained: Trained, *, beats_baseline: bool, **overrides: Any
) -> tuple[Any, str]:
    settings = make_settings(tmp_path, trained, **_tight_thresholds(**overrides))
    version = register_variant(
        settings,
        tmp_path,
        edit=lambda d: edit_json(d / "metadata.json", beats_baseline=beats_baseline),
    )
    set_production(settings, "BTC-lstm", version)
    return settings, version


def _magnitude(directory: Path, *, intercept: float) -> None:
    """The bundle's magnitude head answering sigmoid(intercept) for every window."""
    import json

    path = directory / "magnitude.json"
    head = json.loads(path.read_text())
    head["coef"] = [0.0] * len(head["coef"])
    head["intercept"] = intercept
    path.write_text(json.dumps(head))
    edit_json(directory / "metadata.json", beats_baseline=True)


def _moving(
    tmp_path: Path, trained: Trained, *, intercept: float, **overrides: Any
) -> tuple[Any, str]:
    settings = make_settings(tmp_path, trained, **_tight_thresholds(**overrides))
    version = register_variant(
        settings, tmp_path, edit=lambda d: _magnitude(d, intercept=intercept)
    )
    set_production(settings, "BTC-lstm", version)
    return settings, version


def test_a_move_unlikely_to_clear_the_fees_holds_the_signal_and_says_why(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings, version = _moving(tmp_path, trained, intercept=-3.0, move_gate=True)
    body = serve(settings).client.get("/api/predictions/BTC").json()

    assert body["modelVersion"] == version
    assert body["prediction"]["move"] == pytest.approx(1 / (1 + math.exp(3.0)), abs=1e-6)
    assert body["prediction"]["signal"] == "HOLD"
    assert body["holdReasons"] == ["small_move"]
    assert "ML_MOVE_THRESHOLD 0.5" in body["reason"]


@pytest.mark.parametrize(
    ("intercept", "overrides"),
    [
        (3.0, {"move_gate": True}),  # a move likely to clear the fees
        (-3.0, {"move_gate": False}),  # the gate turned off
        (-3.0, {"move_gate": True, "move_threshold": 0.04}),  # a threshold below the forecast
    ],
)
def test_the_signal_passes_when_the_move_clears_the_threshold_or_the_gate_is_off(
    serve: Callable[..., LiveServer],
    tmp_path: Path,
    trained: Trained,
    intercept: float,
    overrides: dict[str, Any],
) -> None:
    settings, _ = _moving(tmp_path, trained, intercept=intercept, **overrides)
    body = serve(settings).client.get("/api/predictions/BTC").json()

    expected = "BUY" if body["prediction"]["prediction"] > 0.5 else "SELL"
    assert body["prediction"]["signal"] == expected
    assert body["holdReasons"] == []
    assert body["prediction"]["move"] == pytest.approx(1 / (1 + math.exp(-intercept)), abs=1e-6)


def test_unproven_version_serves_hold_with_its_probability_shown(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings, version = _variant_serving(tmp_path, trained, beats_baseline=False)
    body = serve(settings).client.get("/api/predictions/BTC").json()

    assert body["modelVersion"] == version
    assert body["unproven"] is True
    assert body["prediction"]["signal"] == "HOLD"
    assert body["prediction"]["prediction"] != 0.5
    assert body["prediction"]["direction"] in {"up", "down"}
    assert "does not beat its strongest baseline" in body["reason"]
    assert "ML_SERVE_UNPROVEN" in body["reason"]
    assert body["holdReasons"] == ["unproven"]


def test_operator_switch_serves_the_signals_of_an_unproven_version(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings, _ = _variant_serving(tmp_path, trained, beats_baseline=False, serve_unproven=True)
    body = serve(settings).client.get("/api/predictions/BTC").json()

    assert body["unproven"] is True
    expected = "BUY" if body["prediction"]["prediction"] > 0.5 else "SELL"
    assert body["prediction"]["signal"] == expected


def test_proven_version_serves_its_signal(
    serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings, _ = _variant_serving(tmp_path, trained, beats_baseline=True)
    body = serve(settings).client.get("/api/predictions/BTC").json()

    assert body["unproven"] is False
    assert "reason" not in body
    expected = "BUY" if body["prediction"]["prediction"] > 0.5 else "SELL"
    assert body["prediction"]["signal"] == expected


def _newest_rows(pair: str, count: int) -> list[list[float]]:
    candles = bundled_candles(pair).iloc[-count:]
    return [
        [_ms(stamp), *(float(v) for v in row)]
        for stamp, row in zip(candles.index, candles.to_numpy(), strict=True)
    ]


def test_post_candles_equals_get_on_the_same_candles(shared: LiveServer) -> None:
    rows = _newest_rows("BTC", default_spec().lookback + 12)
    names = ("timestamp", "open", "high", "low", "close", "volume")
    objects = [dict(zip(names, r, strict=True)) for r in rows]

    get = shared.client.get("/api/predictions/BTC").json()
    posted = shared.client.post("/api/predictions/BTC", json={"candles": rows})
    as_objects = shared.client.post("/api/predictions/BTC", json={"candles": objects})

    assert posted.status_code == 200, posted.text
    for body in (posted.json(), as_objects.json()):
        assert body["prediction"] == get["prediction"]
        assert body["candleTime"] == get["candleTime"]
        assert body["modelVersion"] == get["modelVersion"]
        assert body["source"] == "request"
        assert body["cached"] is False


def test_post_with_iso_timestamps_is_read_as_utc(shared: LiveServer) -> None:
    rows = _newest_rows("BTC", default_spec().lookback + 12)
    candles = bundled_candles("BTC").iloc[-len(rows) :]
    objects = [
        {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            **dict(zip(("open", "high", "low", "close", "volume"), r[1:], strict=True)),
        }
        for stamp, r in zip(candles.index, rows, strict=True)
    ]

    body = shared.client.post("/api/predictions/BTC", json={"candles": objects}).json()

    assert body["candleTime"] == rows[-1][0]


def test_post_with_too_few_candles_is_422_naming_the_minimum(shared: LiveServer) -> None:
    response = shared.client.post("/api/predictions/BTC", json={"candles": _newest_rows("BTC", 30)})

    assert response.status_code == 422
    error = response.json()["error"]
    assert "30 candles" in error
    assert f"at least {default_spec().warmup + 12} candles" in error


def _bad(index: int, position: int, value: object) -> dict[str, Any]:
    rows: list[list[Any]] = _newest_rows("BTC", 5)
    rows[index][position] = value
    return {"candles": rows}


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        (_bad(3, 4, "x"), "candles[3][4]", "valid number"),
        (_bad(2, 2, 1.0), "candles[2]", "high below max(open, close)"),
        (_bad(1, 1, -5.0), "candles[1][1]", "greater than or equal to"),
        (_bad(4, 0, 1704067200), "candles[4][0]", "not epoch milliseconds"),
        (_bad(2, 0, _newest_rows("BTC", 5)[1][0]), "candles[2]", "duplicated timestamp"),
        ({"candles": [{"timestamp": 1704067200000, "open": 1}]}, "candles[0].high", "required"),
        ({"candles": [7]}, "candles[0]", "a candle is an object"),
        ({"candles": []}, "candles", "at least 1 item"),
        ({"candle": []}, "candles", "required"),
    ],
)
def test_malformed_candle_body_is_422_naming_the_candle_and_the_rule(
    shared: LiveServer, body: dict[str, Any], where: str, words: str
) -> None:
    response = shared.client.post("/api/predictions/BTC", json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith(where), error
    assert words in error


def test_body_that_is_not_json_is_422(shared: LiveServer) -> None:
    response = shared.client.post(
        "/api/predictions/BTC", content=b"{nope", headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert "JSON" in response.json()["error"]


def test_more_candles_than_allowed_is_413_naming_the_setting(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve(max_request_candles=100)
    response = server.client.post(
        "/api/predictions/BTC", json={"candles": _newest_rows("BTC", 101)}
    )

    assert response.status_code == 413
    assert "ML_MAX_REQUEST_CANDLES" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/predictions/DOGE",
        "/api/predictions/DOGE/history",
        "/api/features/DOGE",
        "/api/models/DOGE/status",
    ],
)
def test_unknown_pair_is_404_naming_the_allowed_pairs(shared: LiveServer, path: str) -> None:
    response = shared.client.get(path)

    assert response.status_code == 404
    assert response.json()["error"] == ("unknown pair 'DOGE': allowed pairs are BTC, ETH, XMR, RVN")


def test_unknown_model_type_is_422_naming_the_allowed_types(shared: LiveServer) -> None:
    response = shared.client.get("/api/predictions/BTC", params={"model": "xgboost"})

    assert response.status_code == 422
    assert "allowed model types are lstm, gru, cnn, transformer" in response.json()["error"]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize(
    "path",
    [
        "/api/predictions/..%2Fx",
        "/api/predictions/BTC%2F..",
        "/api/predictions/%2E%2E",
        "/api/predictions/..%2F..%2Fetc%2Fpasswd/history",
        "/api/features/..%2Fcandles",
        "/api/models/BTC%2F..%2F..%2Fx/status",
        "/api/predictions/BTC%00",
        "/api/predictions/B",
    ],
)
def test_malformed_pair_is_refused_before_any_file_is_touched(
    serve: Callable[..., LiveServer], tmp_path: Path, path: str
) -> None:
    server = serve()
    data = server.state.settings.data_dir
    before = _snapshot(data)

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", path)  # sent as written: no client-side normalisation
    response = connection.getresponse()
    status = response.status
    response.read()
    connection.close()

    assert status in {404, 422}
    assert _snapshot(data) == before


def test_history_lists_computed_predictions_and_filters_by_since(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    made = server.client.get("/api/predictions/BTC").json()
    server.state.history_writer.flush()

    history = server.client.get("/api/predictions/BTC/history").json()
    rows = history["predictions"]
    assert history["count"] == history["totalCount"] == 1
    assert rows[0]["modelVersion"] == "1"
    assert rows[0]["modelType"] == "lstm"
    assert rows[0]["candleTime"] == made["candleTime"]
    assert rows[0]["prediction"] == pytest.approx(made["prediction"]["prediction"], abs=1e-6)
    assert rows[0]["outcome"] is None

    made_at = rows[0]["timestamp"]
    client = server.client
    url = "/api/predictions/BTC/history"
    assert client.get(url, params={"since": made_at}).json()["count"] == 1
    assert client.get(url, params={"since": made_at + 1}).json()["count"] == 0
    assert client.get(url, params={"since": "2020-01-01T00:00:00Z"}).json()["count"] == 1
    assert client.get(url, params={"since": "2999-01-01"}).json()["count"] == 0


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"since": "yesterday"}, "expected epoch milliseconds"),
        ({"since": "-5"}, "expected epoch milliseconds"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
    ],
)
def test_bad_history_query_is_422_naming_the_value(
    shared: LiveServer, params: dict[str, Any], words: str
) -> None:
    response = shared.client.get("/api/predictions/BTC/history", params=params)

    assert response.status_code == 422
    assert words in response.json()["error"]
