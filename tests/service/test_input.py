"""Malformed input on every route answers 4xx naming the value and what is allowed; no boolean
is read as a number (query, path or body), and nothing is changed by a refused request."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from pipelines.training_params import PARAMS
from tests.service.conftest import LiveServer, bundled_candles


def _rows(count: int) -> list[list[Any]]:
    candles = bundled_candles("BTC").iloc[-count:]
    return [
        [int(stamp.value // 1_000_000), *(float(v) for v in row)]
        for stamp, row in zip(candles.index, candles.to_numpy(), strict=True)
    ]


def _queue(server: LiveServer) -> dict[str, Any]:
    body = server.client.get("/api/training/queue").json()
    return {"queued": body["queue"]["queued"]["count"], "paused": body["queue"].get("paused")}


def _refused(response: Any, *words: str, status: int = 422) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    for word in words:
        assert word in body["error"], (word, body["error"])


def test_cleanup_refuses_a_boolean_max_age_and_keeps_the_history(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    server.client.get("/api/predictions/BTC")
    server.state.history_writer.flush()
    url = "/api/storage/cleanup"

    for value in (True, False, "1", "0.0001", [1], {"h": 1}, 0, -1, 10**400):
        _refused(server.client.post(url, json={"maxAgeHours": value}), "maxAgeHours")
    for raw in ('{"maxAgeHours": NaN}', '{"maxAgeHours": Infinity}', '{"maxAgeHours": -Infinity}'):
        response = server.client.post(
            url, content=raw, headers={"Content-Type": "application/json"}
        )
        _refused(response, "maxAgeHours")
    assert server.state.history.count(pair="BTC") == 1


def test_training_refuses_booleans_strings_and_odd_numbers_in_every_parameter(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    before = _queue(server)

    for name in ["priority", *(param.camel for param in PARAMS.values())]:
        for value in (True, False, "5", None, [1], float("inf"), 10**400):
            if value == float("inf"):
                content = json.dumps({name: value})  # `Infinity`, as JSON.parse would refuse
                response = server.client.post(
                    "/api/train/BTC", content=content, headers={"Content-Type": "application/json"}
                )
            else:
                response = server.client.post("/api/train/BTC/lstm", json={name: value})
            _refused(response, name)
    _refused(server.client.post("/api/train/BTC", json={"priority": 0}), "priority")
    _refused(server.client.post("/api/train/BTC", json={"priority": 11}), "priority")
    _refused(server.client.post("/api/train/BTC", json={"priority": 2.5}), "priority")
    _refused(server.client.post("/api/train/BTC", json=[1, 2]))
    assert _queue(server) == before


def test_cancel_and_cooldowns_refuse_non_strings(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    job = server.client.post("/api/train/BTC").json()["jobId"]
    before = _queue(server)

    _refused(server.client.request("DELETE", f"/api/training/job/{job}", json={"reason": 5}))
    _refused(server.client.post("/api/training/emergency-stop", json={"reason": True}))
    for body in ({"pair": True}, {"pair": None}, {"pair": 1}, {"modelType": "lstm"}):
        _refused(server.client.post("/api/training/clear-cooldowns", json=body))
    assert _queue(server) == before


def test_posted_candles_refuse_booleans_and_out_of_range_times(shared: LiveServer) -> None:
    url = "/api/predictions/BTC"
    names = ("timestamp", "open", "high", "low", "close", "volume")
    for position, name in enumerate(names):
        rows = _rows(5)
        rows[2][position] = True
        _refused(shared.client.post(url, json={"candles": rows}), f"candles[2][{position}]")
        objects = [dict(zip(names, row, strict=True)) for row in _rows(5)]
        objects[1][name] = True
        _refused(shared.client.post(url, json={"candles": objects}), f"candles[1].{name}")
    for stamp in (10**13, 10**30, -1, 1.7e12, "1704067200000"):
        rows = _rows(5)
        rows[0][0] = stamp
        _refused(shared.client.post(url, json={"candles": rows}), "candles[0][0]")
    for stamp in ("9999-01-01T00:00:00Z", "0001-01-01T00:00:00Z", 0, 10**13, 1.7e12):
        objects = [dict(zip(names, row, strict=True)) for row in _rows(5)]
        objects[0]["timestamp"] = stamp
        _refused(shared.client.post(url, json={"candles": objects}), "candles[0].timestamp")
    raw = json.dumps({"candles": _rows(5)}).replace(str(_rows(5)[1][4]), "NaN", 1)
    response = shared.client.post(url, content=raw, headers={"Content-Type": "application/json"})
    _refused(response, "candles[1]")


def test_predictions_from_posted_candles_are_kept_out_of_the_history(
    serve: Callable[..., LiveServer],
) -> None:
    from pipelines.features.spec import default_spec

    server = serve()
    rows = _rows(default_spec().lookback + 12)
    for _ in range(3):
        response = server.client.post("/api/predictions/BTC", json={"candles": rows})
        assert response.status_code == 200, response.text
    server.client.get("/api/predictions/BTC")
    server.state.history_writer.flush()

    assert server.state.history.count(pair="BTC") == 1


@pytest.mark.parametrize(
    "since",
    ["²", "１７０４０６７２００００", "1" * 19, "-5", "true", "", "2024-13-01", "2024-01-01T25:00"],
)
def test_history_since_that_is_no_time_is_422_naming_it(shared: LiveServer, since: str) -> None:
    response = shared.client.get("/api/predictions/BTC/history", params={"since": since})

    _refused(response, repr(since), "epoch milliseconds")


@pytest.mark.parametrize("since", ["0" * 18, "9" * 18, "0001-01-01T00:00:00Z", "2024-01-01"])
def test_history_since_at_the_edges_is_answered(shared: LiveServer, since: str) -> None:
    response = shared.client.get("/api/predictions/BTC/history", params={"since": since})

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "params", "words"),
    [
        ("/api/predictions/BTC/history", {"limit": "true"}, "limit"),
        ("/api/predictions/BTC/history", {"limit": "１０"}, "limit"),
        ("/api/predictions/BTC/history", {"limit": str(10**30)}, "limit"),
        ("/api/predictions/BTC", {"ensemble": "2"}, "ensemble"),
        ("/api/predictions/BTC", {"model": "true"}, "model type"),
        ("/api/predictions", {"model": ""}, "model type"),
    ],
)
def test_bad_query_values_are_422_naming_them(
    shared: LiveServer, path: str, params: dict[str, str], words: str
) -> None:
    _refused(shared.client.get(path, params=params), words)


@pytest.mark.parametrize(
    "path",
    [
        "/api/predictions/%00",
        "/api/predictions/BTC%20ETH",
        "/api/features/" + "A" * 5000,
        "/api/models/%F0%9F%92%A9/status",
        "/api/training/job/" + "x" * 5000,
    ],
)
def test_odd_path_values_are_4xx_not_500(shared: LiveServer, path: str) -> None:
    response = shared.client.get(path)

    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
    assert response.json()["status"] == response.status_code


@pytest.mark.parametrize(
    "candle",
    [
        {
            "timestamp": "2000-01-01T00:00:00Z",
            "open": 5e-324,
            "high": 1.0,
            "low": 5e-324,
            "close": 5e-324,
            "volume": 0.0,
        },
        [1704067200000, 1e308, 1e308, 1e308, 1e308, 1e308],
    ],
)
def test_odd_but_valid_candles_are_answered_not_500(shared: LiveServer, candle: Any) -> None:
    response = shared.client.post("/api/predictions/BTC", json={"candles": [candle]})

    assert response.status_code in (200, 422), response.text
    assert response.json()["status" if response.status_code == 422 else "pair"]
