"""The domain API on a real SQLite file: enqueue, duplicates, cancel, stop, cooldowns, status."""

from __future__ import annotations

import re
import threading

import pytest
from sqlalchemy import func, select

from pipelines.db import read_session, write_session
from pipelines.queue import lease, transitions
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.errors import (
    DuplicateJobError,
    JobNotCancellableError,
    QueueValidationError,
    UnknownJobError,
)
from pipelines.queue.tables import TrainingJob
from pipelines.settings import Settings

JOB_ID = re.compile(r"^(BTC|ETH|XMR|RVN)_(lstm|gru|cnn|transformer)_\d{13}$")


def _count(settings: Settings) -> int:
    with read_session(settings.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(TrainingJob)) or 0)


def _start_training(settings: Settings, job_id: str, worker: str = "test-worker") -> int:
    """Move a queued job to `training` the way a scheduler does (lease, then claim)."""
    assert lease.acquire(settings.database_url, holder=worker, ttl_ms=60_000, now=now_ms())
    attempt = transitions.claim(
        settings.database_url, job_id=job_id, worker_id=worker, now=now_ms()
    )
    assert attempt is not None
    return attempt


def test_enqueue_creates_a_queued_job_with_the_original_id_format(queue: TrainingQueue) -> None:
    result = queue.enqueue(pair="btc", model_type="lstm", params={"epochs": 50}, priority=3)
    assert JOB_ID.match(result.job_id)
    assert result.job_id.startswith("BTC_lstm_")
    job = queue.get_job(job_id=result.job_id)
    assert (job.status, job.priority, job.params, job.attempts) == ("queued", 3, {"epochs": 50}, 0)
    assert result.can_train.allowed is True
    assert result.can_train.reason == "Can start immediately"
    assert result.message == "Training job queued for BTC:lstm"


def test_enqueue_result_serialises_to_the_rest_shape(queue: TrainingQueue) -> None:
    body = queue.enqueue(pair="ETH", model_type="lstm").to_json_dict()
    assert set(body) == {
        "message",
        "jobId",
        "pair",
        "modelType",
        "priority",
        "canTrain",
        "queueStatus",
        "timestamp",
    }
    # The original sends cooldownRemainingMinutes only while a cooldown is active.
    assert body["canTrain"] == {"allowed": True, "reason": "Can start immediately"}
    status = body["queueStatus"]
    assert {"active", "queued", "history", "cooldowns"} <= set(status)
    assert status["queued"]["jobs"][0]["queuePosition"] == 1
    assert set(status["queued"]["jobs"][0]) >= {
        "id",
        "pair",
        "modelType",
        "priority",
        "queuePosition",
        "queuedFor",
    }


def test_second_request_for_same_pair_is_rejected_naming_the_existing_job(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    first = queue.enqueue(pair="BTC", model_type="lstm")
    with pytest.raises(DuplicateJobError) as caught:
        queue.enqueue(pair="BTC", model_type="lstm", priority=1)
    assert caught.value.existing.id == first.job_id
    assert first.job_id in str(caught.value)
    assert _count(queue_settings) == 1


def test_second_request_is_rejected_while_the_first_trains(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    first = queue.enqueue(pair="BTC")
    _start_training(queue_settings, first.job_id)
    with pytest.raises(DuplicateJobError) as caught:
        queue.enqueue(pair="BTC")
    assert caught.value.existing.status == "training"


def test_other_model_type_or_pair_is_accepted(queue: TrainingQueue) -> None:
    queue.enqueue(pair="BTC", model_type="lstm")
    queue.enqueue(pair="BTC", model_type="gru")
    queue.enqueue(pair="ETH", model_type="lstm")
    assert queue.queue_status().queue.queued.count == 3


def test_a_new_request_is_accepted_once_the_previous_job_ended(queue: TrainingQueue) -> None:
    first = queue.enqueue(pair="BTC")
    queue.cancel(job_id=first.job_id)
    second = queue.enqueue(pair="BTC")
    assert second.job_id != first.job_id


def test_fifty_concurrent_enqueues_create_exactly_one_job(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    accepted: list[str] = []
    rejected: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(50)

    def request() -> None:
        barrier.wait()
        try:
            accepted.append(queue.enqueue(pair="BTC", model_type="lstm").job_id)
        except DuplicateJobError as error:
            rejected.append(error.existing.id)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=request) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(accepted) == 1
    assert len(rejected) == 49
    assert set(rejected) == set(accepted)  # every rejection names the one job
    assert _count(queue_settings) == 1


@pytest.mark.parametrize(
    ("request_args", "words"),
    [
        ({"pair": "DOGE"}, "unknown pair 'DOGE'"),
        ({"pair": "BTC", "model_type": "xgboost"}, "unknown model type 'xgboost'"),
        ({"pair": "BTC", "priority": 0}, "invalid priority 0"),
        ({"pair": "BTC", "priority": 11}, "invalid priority 11"),
        ({"pair": "BTC", "params": {"epochs": 0}}, "invalid epochs 0"),
        ({"pair": "BTC", "params": {"epochs": 5000}}, "invalid epochs 5000"),
        ({"pair": "BTC", "params": {"optimizer": "sgd"}}, "unknown training parameter"),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(
    queue: TrainingQueue,
    queue_settings: Settings,
    request_args: dict[str, object],
    words: str,
) -> None:
    with pytest.raises(QueueValidationError, match=re.escape(words)):
        queue.enqueue(**request_args)  # type: ignore[arg-type]
    assert _count(queue_settings) == 0


def test_cancel_a_queued_job(queue: TrainingQueue) -> None:
    job_id = queue.enqueue(pair="BTC").job_id
    result = queue.cancel(job_id=job_id, reason="User requested cancellation")
    assert (result.status, result.reason) == ("cancelled", "User requested cancellation")
    job = queue.get_job(job_id=job_id)
    assert job.status == "cancelled"
    assert job.cancel_reason == "User requested cancellation"
    assert job.finished_at is not None


def test_cancel_a_training_job_asks_its_scheduler_to_kill_it(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    job_id = queue.enqueue(pair="BTC").job_id
    _start_training(queue_settings, job_id)
    result = queue.cancel(job_id=job_id)
    assert result.status == "cancelling"
    job = queue.get_job(job_id=job_id)
    assert (job.status, job.cancel_requested) == ("training", True)


def test_cancel_unknown_or_ended_jobs_is_refused(queue: TrainingQueue) -> None:
    with pytest.raises(UnknownJobError, match="unknown job id 'BTC_lstm_1'"):
        queue.cancel(job_id="BTC_lstm_1")
    job_id = queue.enqueue(pair="BTC").job_id
    queue.cancel(job_id=job_id)
    with pytest.raises(JobNotCancellableError, match="already ended"):
        queue.cancel(job_id=job_id)


def test_emergency_stop_cancels_queued_jobs_stops_training_and_pauses(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    running = queue.enqueue(pair="BTC").job_id
    _start_training(queue_settings, running)
    waiting = [queue.enqueue(pair="ETH").job_id, queue.enqueue(pair="XMR").job_id]
    result = queue.emergency_stop()
    assert result.stopped_jobs == [running]
    assert sorted(result.cancelled_jobs) == sorted(waiting)
    status = queue.queue_status().queue
    assert status.paused is True
    assert status.queued.count == 0
    assert status.active.jobs[0].cancel_requested is True
    # Enqueueing while paused works, and says the job waits for resume.
    later = queue.enqueue(pair="RVN")
    assert later.can_train.allowed is False
    assert later.can_train.reason.startswith("Training paused by emergency stop")
    assert "resumed" in later.message
    assert queue.resume().paused is False
    assert queue.queue_status().queue.paused is False


def _cool(settings: Settings, pair: str, model_type: str, minutes: float) -> None:
    now = now_ms()
    with write_session(settings.database_url) as session:
        transitions.start_cooldown(
            session,
            pair=pair,
            model_type=model_type,
            job_id=f"{pair}_{model_type}_1",
            now=now,
            length_ms=int(minutes * 60_000),
        )


def test_training_during_a_cooldown_is_queued_and_says_so(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    _cool(queue_settings, "BTC", "lstm", 25)
    verdict = queue.can_train(pair="BTC", model_type="lstm")
    assert verdict.to_json_dict() == {
        "allowed": False,
        "reason": "Cooldown active",
        "cooldownRemainingMinutes": 25,
    }
    result = queue.enqueue(pair="BTC")
    assert result.can_train.cooldown_remaining_minutes == 25
    assert "cooldown ends in 25 minute" in result.message
    assert queue.get_job(job_id=result.job_id).status == "queued"
    status = queue.queue_status().to_json_dict()["queue"]
    assert status["cooldowns"][0]["pair"] == "BTC"
    assert status["cooldowns"][0]["cooldownRemainingMinutes"] == 25
    assert status["queued"]["jobs"][0]["cooldownRemainingMinutes"] == 25
    # Another model type of the same pair is not cooling down.
    assert queue.can_train(pair="BTC", model_type="gru").allowed is True


def test_clear_cooldowns_takes_one_pair_and_model_type_or_all(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    for pair in ("BTC", "ETH", "XMR"):
        _cool(queue_settings, pair, "lstm", 30)
    one = queue.clear_cooldowns(pair="btc", model_type="lstm")
    assert [(c.pair, c.model_type) for c in one.cleared] == [("BTC", "lstm")]
    assert queue.can_train(pair="BTC").allowed is True
    assert queue.can_train(pair="ETH").allowed is False
    everything = queue.clear_cooldowns()
    assert sorted(c.pair for c in everything.cleared) == ["ETH", "XMR"]
    assert queue.queue_status().queue.cooldowns == []
    with pytest.raises(QueueValidationError, match="unknown pair 'DOGE'"):
        queue.clear_cooldowns(pair="DOGE", model_type="lstm")


def test_queue_positions_follow_priority_then_age(queue: TrainingQueue) -> None:
    low = queue.enqueue(pair="BTC", priority=9).job_id
    first_normal = queue.enqueue(pair="ETH", priority=5).job_id
    second_normal = queue.enqueue(pair="XMR", priority=5).job_id
    urgent = queue.enqueue(pair="RVN", priority=1).job_id
    jobs = queue.queue_status().queue.queued.jobs
    assert [job.id for job in jobs] == [urgent, first_normal, second_normal, low]
    assert [job.queue_position for job in jobs] == [1, 2, 3, 4]


def test_can_train_says_why_a_job_would_wait(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    running = queue.enqueue(pair="BTC").job_id
    assert queue.can_train(pair="BTC").reason == f"Already queued as job {running}"
    assert queue.can_train(pair="ETH").reason == "Queued behind 1 job"
    # A higher priority would go first.
    assert queue.can_train(pair="ETH", priority=1).allowed is True
    _start_training(queue_settings, running)
    assert queue.can_train(pair="BTC").reason == f"Already training as job {running}"
    assert queue.can_train(pair="ETH").reason == f"Another training is running (job {running})"


def test_queue_status_is_the_original_shape(queue: TrainingQueue, queue_settings: Settings) -> None:
    running = queue.enqueue(pair="BTC").job_id
    _start_training(queue_settings, running)
    queue.enqueue(pair="ETH")
    ended = queue.enqueue(pair="XMR").job_id
    queue.cancel(job_id=ended)
    body = queue.queue_status().to_json_dict()
    assert set(body) == {"queue"}
    status = body["queue"]
    assert status["active"]["count"] == 1
    active = status["active"]["jobs"][0]
    assert {"id", "pair", "modelType", "status", "startedAt", "duration"} <= set(active)
    assert (active["id"], active["status"]) == (running, "training")
    assert status["queued"]["count"] == 1
    assert status["history"]["total"] == 1
    recent = status["history"]["recent"][0]
    assert (recent["id"], recent["status"]) == (ended, "cancelled")
    assert isinstance(recent["attemptHistory"], list)
    assert status["cooldowns"] == []
