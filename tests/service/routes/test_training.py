"""Training routes over the queue's domain API, on a real uvicorn.

Without a scheduler (most tests) jobs stay queued, so what a request changed is exactly what the
job table shows; the Load Testing sequence of the original README runs with the in-process
scheduler and the `smoke` entry point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipelines.db import write_session
from pipelines.queue.tables import TrainingCooldown
from tests.service.conftest import LiveServer, wait_until


def _queue(server: LiveServer) -> dict[str, Any]:
    body: dict[str, Any] = server.client.get("/api/training/queue").json()["queue"]
    return body


def test_train_answers_202_with_the_job_and_can_train(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    response = server.client.post("/api/train/BTC/lstm", json={"epochs": 5, "priority": 3})

    assert response.status_code == 202
    body = response.json()
    assert body["jobId"].startswith("BTC_lstm_")
    assert body["pair"] == "BTC"
    assert body["modelType"] == "lstm"
    assert body["message"].startswith("Training job queued for BTC:lstm")
    assert body["canTrain"]["allowed"] is True
    queued = _queue(server)["queued"]
    assert queued["count"] == 1
    assert queued["jobs"][0]["id"] == body["jobId"]
    assert queued["jobs"][0]["priority"] == 3
    job = server.client.get(f"/api/training/job/{body['jobId']}").json()
    assert job["status"] == "queued"
    assert job["params"]["epochs"] == 5


def test_train_without_model_type_trains_the_default_one(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    body = server.client.post("/api/train/eth").json()

    assert body["pair"] == "ETH"
    assert body["modelType"] == "lstm"


def test_second_request_for_same_pair_is_409_naming_the_first_job(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    first = server.client.post("/api/train/BTC/lstm").json()
    second = server.client.post("/api/train/BTC/lstm")

    assert second.status_code == 409
    assert first["jobId"] in second.json()["error"]
    assert second.json()["existing"]["id"] == first["jobId"]
    assert _queue(server)["queued"]["count"] == 1


def test_clear_cooldowns_with_a_misspelt_field_is_422_and_clears_nothing(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    for pair in ("BTC", "ETH"):
        _cooldown(server, pair)

    response = server.client.post(
        "/api/training/clear-cooldowns", json={"pair": "BTC", "model_type": "lstm"}
    )

    assert response.status_code == 422
    assert "model_type" in response.json()["error"]
    assert len(_queue(server)["cooldowns"]) == 2


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/train/BTC/lstm", {"epochs": 0}, "invalid epochs 0"),
        ("/api/train/BTC/lstm", {"epochs": 1001}, "invalid epochs 1001"),
        ("/api/train/BTC/lstm", {"epochs": "many"}, "invalid epochs 'many'"),
        ("/api/train/BTC/lstm", {"priority": 0}, "priority"),
        ("/api/train/BTC/lstm", {"priority": 11}, "priority"),
        ("/api/train/BTC/lstm", {"learningRate": 2}, "learning_rate"),
        ("/api/train/BTC/lstm", {"optimizer": "sgd"}, "optimizer"),
        ("/api/train/BTC/xgboost", {}, "xgboost"),
        ("/api/train/BTC/lstm", [1, 2], "body"),
    ],
)
def test_out_of_bounds_training_request_is_422_and_changes_nothing(
    serve: Callable[..., LiveServer], path: str, body: Any, words: str
) -> None:
    server = serve()
    before = _queue(server)

    response = server.client.post(path, json=body)

    assert response.status_code == 422
    assert words in response.json()["error"]
    after = _queue(server)
    assert after == before
    assert after["queued"]["count"] == 0


def test_unknown_pair_is_404_and_changes_nothing(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    response = server.client.post("/api/train/DOGE/lstm")

    assert response.status_code == 404
    assert "allowed pairs are BTC, ETH, XMR, RVN" in response.json()["error"]
    assert _queue(server)["queued"]["count"] == 0


def test_cancel_removes_a_queued_job_and_refuses_twice(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    job_id = server.client.post("/api/train/BTC/lstm").json()["jobId"]

    cancelled = server.client.request(
        "DELETE", f"/api/training/job/{job_id}", json={"reason": "User requested cancellation"}
    )
    again = server.client.delete(f"/api/training/job/{job_id}")
    unknown = server.client.delete("/api/training/job/BTC_lstm_1")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["reason"] == "User requested cancellation"
    assert _queue(server)["queued"]["count"] == 0
    assert again.status_code == 409
    assert "already ended" in again.json()["error"]
    assert unknown.status_code == 404
    assert "BTC_lstm_1" in unknown.json()["error"]


def test_emergency_stop_cancels_queued_jobs_and_pauses_until_resume(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    ids = [server.client.post(f"/api/train/{pair}").json()["jobId"] for pair in ("BTC", "ETH")]

    stop = server.client.post("/api/training/emergency-stop").json()
    paused = _queue(server)
    resume = server.client.post("/api/training/resume").json()

    assert sorted(stop["cancelledJobs"]) == sorted(ids)
    assert stop["paused"] is True
    assert paused["paused"] is True
    assert paused["queued"]["count"] == 0
    assert resume["paused"] is False
    assert _queue(server)["paused"] is False


def _cooldown(server: LiveServer, pair: str, model_type: str = "lstm") -> None:
    now = int(time.time() * 1000)
    with write_session(server.state.settings.database_url) as session:
        session.add(
            TrainingCooldown(
                pair=pair,
                model_type=model_type,
                job_id=f"{pair}_{model_type}_{now}",
                started_at=now,
                ends_at=now + 30 * 60_000,
            )
        )


def test_clear_cooldowns_clears_one_pair_or_all(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    for pair in ("BTC", "ETH", "XMR"):
        _cooldown(server, pair)
    assert len(_queue(server)["cooldowns"]) == 3

    one = server.client.post(
        "/api/training/clear-cooldowns", json={"pair": "BTC", "modelType": "lstm"}
    ).json()
    assert one["cleared"] == [{"pair": "BTC", "modelType": "lstm"}]
    assert {c["pair"] for c in _queue(server)["cooldowns"]} == {"ETH", "XMR"}

    every = server.client.post("/api/training/clear-cooldowns").json()
    assert len(every["cleared"]) == 2
    assert _queue(server)["cooldowns"] == []


def test_clear_cooldowns_with_bad_model_type_is_422_and_clears_nothing(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    _cooldown(server, "BTC")

    response = server.client.post(
        "/api/training/clear-cooldowns", json={"pair": "BTC", "modelType": "forest"}
    )

    assert response.status_code == 422
    assert "forest" in response.json()["error"]
    assert len(_queue(server)["cooldowns"]) == 1


def test_load_testing_sequence_of_the_original_readme(
    serve: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The smoke "training" sleeps long enough for BTC to be active while ETH waits.
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "60")
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    server = serve(
        run_scheduler=True,
        training_entry_point="smoke",
        queue_processing_interval_ms=200,
        scheduler_lease_ms=2_000,
    )

    # Test rapid predictions (should hit cache)
    answers = [server.client.get("/api/predictions/BTC").json() for _ in range(10)]
    assert [a["cached"] for a in answers] == [False] + [True] * 9

    # Test training queue management: BTC twice at once, then ETH while BTC is accepted.
    barrier = threading.Barrier(2)
    results: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            barrier.wait()
            results.append(client.post("/api/train/BTC/lstm"))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    queued_eth = server.client.post("/api/train/ETH/lstm")

    btc = sorted(results, key=lambda r: r.status_code)
    assert [r.status_code for r in btc] == [202, 409]
    accepted = btc[0].json()["jobId"]
    assert btc[1].json()["existing"]["id"] == accepted
    assert accepted in btc[1].json()["error"]
    assert queued_eth.status_code == 202
    eth = queued_eth.json()["jobId"]

    # Monitor queue status: BTC trains, ETH waits its turn.
    def settled() -> dict[str, Any] | None:
        queue = _queue(server)
        return queue if queue["active"]["count"] == 1 and queue["queued"]["count"] == 1 else None

    queue = wait_until(settled, timeout=60)
    assert queue["active"]["jobs"][0]["id"] == accepted
    assert queue["queued"]["jobs"][0]["id"] == eth
    assert queue["queued"]["jobs"][0]["queuePosition"] == 1

    stop = server.client.post("/api/training/emergency-stop").json()
    assert stop["stoppedJobs"] == [accepted]
    assert stop["cancelledJobs"] == [eth]
    stopped = wait_until(
        lambda: _queue(server)["active"]["count"] == 0 and _queue(server), timeout=60
    )
    assert stopped["queued"]["count"] == 0
    assert server.client.get(f"/api/training/job/{accepted}").json()["status"] == "cancelled"
