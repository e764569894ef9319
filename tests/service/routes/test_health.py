"""`GET /api/health`: the original's shape, served models per pair, queue and cache counts."""

from __future__ import annotations

from tests.service.conftest import LiveServer


def test_health_reports_models_queue_and_caches_in_the_original_shape(
    shared: LiveServer,
) -> None:
    body = shared.client.get("/api/health").json()

    assert body["status"] == "healthy"
    assert body["service"] == "trading-bot-ml"
    assert body["quickMode"] is False  # lstm and gru are enabled in `shared`
    btc = body["models"]["BTC"]
    assert btc["lstm"]["state"] == "loaded"
    assert btc["lstm"]["version"] == "1"
    assert btc["gru"]["state"] == "loaded"
    assert body["models"]["XMR"]["lstm"] == {
        "state": "no_production_model",
        "version": None,
        "failedVersion": None,
        "message": "XMR-lstm has no version aliased production",
        "unproven": None,
    }
    queue = body["training"]["queue"]
    assert queue["active"] == {"count": 0, "jobs": []}
    assert queue["queued"] == {"count": 0, "jobs": []}
    assert queue["cooldowns"] == []
    assert body["training"]["maxConcurrent"] == 1
    assert body["training"]["scheduler"]["inProcess"] is False
    assert set(body["performance"]["cacheHits"]) == {"predictions", "features", "modelStatus"}
    assert set(body["performance"]["cacheMisses"]) == {"predictions", "features", "modelStatus"}
    assert body["registry"]["lastRefresh"] is not None
    assert isinstance(body["timestamp"], int)
