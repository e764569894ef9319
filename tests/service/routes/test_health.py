"""`GET /api/health`, `/livez`, `/readyz`: the original's shape, background work, probes."""

from __future__ import annotations

from collections.abc import Callable

from tests.service.conftest import LiveServer, wait_until


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
    assert body["database"] == {"state": "up", "migrated": True, "lastError": None}
    background = body["background"]
    assert {"database", "model-refresh", "outcome-filler", "retention"} <= set(background)
    assert {chore["state"] for chore in background.values()} == {"ok"}
    assert background["database"]["lastSuccess"] is not None


def test_livez_and_readyz_answer_200_while_everything_is_reachable(shared: LiveServer) -> None:
    live = shared.client.get("/livez")
    assert live.status_code == 200
    assert live.json()["status"] == "alive"
    ready = shared.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() | {"timestamp": 0} == {
        "status": "ready",
        "database": "up",
        "registry": "up",
        "timestamp": 0,
    }


def test_a_failing_chore_makes_health_degraded_until_it_recovers(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    broken = [True]

    def chore() -> None:
        if broken[0]:
            raise ConnectionError("could not connect to postgresql://u:s3cret@db/x")

    server.state.chores.add("probe", chore, interval_s=3600, run_now=True)
    failing = wait_until(
        lambda: (b := server.client.get("/api/health").json())["status"] == "degraded" and b
    )
    probe = failing["background"]["probe"]
    assert probe["state"] == "failing"
    assert probe["consecutiveFailures"] >= 1
    assert probe["lastError"] == "ConnectionError: could not connect to postgresql://u:***@db/x"
    assert probe["nextRetry"] is not None
    broken[0] = False  # the retry after its backoff (1 s, 2 s, ...) succeeds
    recovered = wait_until(
        lambda: (b := server.client.get("/api/health").json())["status"] == "healthy" and b,
        timeout=20,
    )
    assert recovered["background"]["probe"]["state"] == "ok"
    assert recovered["background"]["probe"]["consecutiveFailures"] == 0
