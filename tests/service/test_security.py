"""`ML_API_KEY`: every state-changing endpoint wants it in `X-API-Key`; reads never do."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.service.conftest import LiveServer

KEY = "s3cret-key"

STATE_CHANGING = [
    ("POST", "/api/train/BTC"),
    ("POST", "/api/train/BTC/lstm"),
    ("DELETE", "/api/training/job/BTC_lstm_1"),
    ("POST", "/api/training/emergency-stop"),
    ("POST", "/api/training/resume"),
    ("POST", "/api/training/clear-cooldowns"),
    ("POST", "/api/storage/save"),
    ("POST", "/api/storage/cleanup"),
]
READS = [
    "/api/health",
    "/api/predictions/BTC",
    "/api/predictions",
    "/api/predictions/BTC/history",
    "/api/features/BTC",
    "/api/models/BTC/status",
    "/api/training/queue",
    "/api/storage/stats",
    "/metrics",
]


@pytest.fixture
def guarded(serve: Callable[..., LiveServer]) -> LiveServer:
    return serve(api_key=KEY)


def test_state_changing_endpoints_answer_401_without_the_key_and_change_nothing(
    guarded: LiveServer,
) -> None:
    before = guarded.client.get("/api/training/queue").json()
    for method, path in STATE_CHANGING:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}):
            response = guarded.client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert "X-API-Key" in response.json()["error"]
    assert guarded.client.get("/api/training/queue").json() == before
    assert not list((guarded.state.settings.data_dir / "backups").glob("*"))


def test_state_changing_endpoints_pass_with_the_key(guarded: LiveServer) -> None:
    headers = {"X-API-Key": KEY}
    client = guarded.client

    job = client.post("/api/train/BTC/lstm", headers=headers)
    assert job.status_code == 202
    job_id = job.json()["jobId"]
    assert client.post("/api/train/ETH", headers=headers).status_code == 202
    assert client.delete(f"/api/training/job/{job_id}", headers=headers).status_code == 200
    assert client.post("/api/training/emergency-stop", headers=headers).status_code == 200
    assert client.post("/api/training/resume", headers=headers).status_code == 200
    assert client.post("/api/training/clear-cooldowns", headers=headers).status_code == 200
    assert client.post("/api/storage/save", headers=headers).status_code == 200
    assert client.post("/api/storage/cleanup", headers=headers).status_code == 200


def test_reads_need_no_key(guarded: LiveServer) -> None:
    for path in READS:
        assert guarded.client.get(path).status_code == 200, path


def test_without_a_configured_key_nothing_asks_for_one(serve: Callable[..., LiveServer]) -> None:
    server = serve()

    assert server.client.post("/api/training/resume").status_code == 200


def test_key_header_name_is_case_insensitive_and_no_other_header_counts(
    guarded: LiveServer,
) -> None:
    client = guarded.client

    assert client.post("/api/training/resume", headers={"x-api-key": KEY}).status_code == 200
    response = client.post("/api/training/resume", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 401
    assert response.json() == {
        "error": "missing or wrong X-API-Key header: this endpoint changes state and "
        "ML_API_KEY is set",
        "status": 401,
    }
