"""The queue's bounds as the training routes answer them, on a real uvicorn."""

from __future__ import annotations

from collections.abc import Callable

from tests.service.conftest import LiveServer


def test_enqueue_beyond_the_queue_bound_answers_429_naming_the_limit(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve(max_queued_jobs=1)
    assert server.client.post("/api/train/BTC/lstm").status_code == 202

    response = server.client.post("/api/train/ETH/lstm")

    assert response.status_code == 429
    body = response.json()
    assert "at most 1 allowed (ML_MAX_QUEUED_JOBS)" in body["error"]
    assert (body["queued"], body["limit"]) == (1, 1)


def test_a_model_too_large_answers_422_naming_the_combined_limit(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()

    response = server.client.post(
        "/api/train/BTC/transformer",
        json={"units": 1024, "layers": 8, "sequenceLength": 1000, "batchSize": 4096},
    )

    assert response.status_code == 422
    assert "units x layers x sequence_length <= 64000" in response.json()["error"]
