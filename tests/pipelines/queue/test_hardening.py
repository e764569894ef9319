"""The queue's bounds and finality on a real SQLite file: no scheduler, no child."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from pipelines.db import read_session, write_session
from pipelines.queue import lease, retention, runner, transitions
from pipelines.queue.api import TrainingQueue
from pipelines.queue.childenv import child_environment
from pipelines.queue.clock import now_ms
from pipelines.queue.errors import QueueFullError, QueueValidationError
from pipelines.queue.tables import FAILED, INTERRUPTED, TrainingAttempt, TrainingJob
from pipelines.queue.transitions import Ending
from pipelines.redact import redact, secret_values
from pipelines.settings import Settings
from tests.pipelines.queue.conftest import make_settings

WORKER = "test-worker"
HOUR_MS = 3_600_000


def _start_training(settings: Settings, job_id: str) -> int:
    assert lease.acquire(settings.database_url, holder=WORKER, ttl_ms=60_000, now=now_ms())
    attempt = transitions.claim(
        settings.database_url, job_id=job_id, worker_id=WORKER, now=now_ms()
    )
    assert attempt is not None
    return attempt


def _row(settings: Settings, job_id: str) -> TrainingJob:
    with read_session(settings.database_url) as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _fail_and_retry(settings: Settings, job_id: str, attempt: int, outcome: str = FAILED) -> bool:
    return transitions.finish_attempt(
        settings.database_url,
        job_id=job_id,
        worker_id=WORKER,
        attempt=attempt,
        ending=Ending(outcome, 3, "exit code 3"),
        now=now_ms(),
        requeue_at=now_ms(),
    )


# --- a cancel or emergency stop is final ----------------------------------------------------


def test_a_cancelled_training_whose_attempt_fails_is_not_retried(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    job_id = queue.enqueue(pair="BTC").job_id
    attempt = _start_training(queue_settings, job_id)
    assert queue.cancel(job_id=job_id, reason="not needed").status == "cancelling"

    # The child died by itself before the kill came: the retry rule would requeue it.
    assert _fail_and_retry(queue_settings, job_id, attempt)

    job = _row(queue_settings, job_id)
    assert job.status == "cancelled"
    assert job.error == "not needed"
    assert job.finished_at is not None


def test_an_emergency_stop_is_not_undone_by_an_interrupted_attempt_being_requeued(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    job_id = queue.enqueue(pair="ETH").job_id
    attempt = _start_training(queue_settings, job_id)
    queue.emergency_stop(reason="market closed")

    assert _fail_and_retry(queue_settings, job_id, attempt, outcome=INTERRUPTED)

    assert _row(queue_settings, job_id).status == "cancelled"


def test_claim_neither_starts_a_job_with_a_cancel_request_nor_clears_it(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    job_id = queue.enqueue(pair="BTC").job_id
    # A row as an earlier version left it: queued, but with the cancel requested.
    with write_session(queue_settings.database_url) as session:
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id)
            .values(cancel_requested_at=now_ms(), cancel_reason="stop it")
        )
    assert lease.acquire(queue_settings.database_url, holder=WORKER, ttl_ms=60_000, now=now_ms())

    assert (
        transitions.claim(
            queue_settings.database_url, job_id=job_id, worker_id=WORKER, now=now_ms()
        )
        is None
    )
    job = _row(queue_settings, job_id)
    assert job.status == "cancelled"
    assert job.cancel_requested_at is not None


# --- infrastructure failures do not count ---------------------------------------------------


def test_an_uncounted_failure_requeues_without_using_an_attempt(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    job_id = queue.enqueue(pair="BTC").job_id
    attempt = _start_training(queue_settings, job_id)

    assert transitions.finish_attempt(
        queue_settings.database_url,
        job_id=job_id,
        worker_id=WORKER,
        attempt=attempt,
        ending=Ending(FAILED, None, "could not start: tracking store unreachable"),
        now=now_ms(),
        requeue_at=now_ms(),
        counted=False,
    )

    job = queue.get_job(job_id=job_id)
    assert (job.status, job.attempts, job.error) == (
        "queued",
        0,
        "could not start: tracking store unreachable",
    )
    # The next claim reuses the number: attempt 1 is still the first real one.
    assert _start_training(queue_settings, job_id) == 1


# --- bounds -------------------------------------------------------------------------------------


def test_enqueue_beyond_the_queue_bound_is_refused_naming_the_limit(tmp_path: Path) -> None:
    from pipelines.db import migrate

    settings = make_settings(tmp_path, max_queued_jobs=2)
    migrate(settings)
    queue = TrainingQueue(settings)
    queue.enqueue(pair="BTC")
    queue.enqueue(pair="ETH")

    with pytest.raises(QueueFullError) as caught:
        queue.enqueue(pair="XMR")

    assert "2 jobs queued, at most 2 allowed (ML_MAX_QUEUED_JOBS)" in str(caught.value)
    with read_session(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(TrainingJob)) == 2


def test_a_model_too_large_for_the_machine_is_refused_at_enqueue(queue: TrainingQueue) -> None:
    body = {"units": 1024, "layers": 8, "sequenceLength": 1000}

    with pytest.raises(QueueValidationError) as caught:
        queue.enqueue(pair="BTC", model_type="transformer", params=body)

    message = str(caught.value)
    assert "units 1024 x layers 8 x sequence_length 1000 = 8192000" in message
    assert "units x layers x sequence_length <= 64000" in message
    assert queue.queue_status().queue.queued.count == 0


# --- retention ----------------------------------------------------------------------------------


def test_retention_deletes_old_ended_jobs_and_logs_and_keeps_the_rest(
    queue: TrainingQueue, queue_settings: Settings
) -> None:
    old = queue.enqueue(pair="BTC").job_id
    attempt = _start_training(queue_settings, old)
    transitions.finish_attempt(
        queue_settings.database_url,
        job_id=old,
        worker_id=WORKER,
        attempt=attempt,
        ending=Ending(FAILED, 3, "exit code 3"),
        now=now_ms() - 800 * HOUR_MS,
    )
    waiting = queue.enqueue(pair="ETH").job_id
    logs = runner.log_dir(queue_settings)
    logs.mkdir(parents=True)
    stale = 800 * 3600
    for name in (f"{old}.attempt-1.log", f"{waiting}.attempt-1.log", "recent.attempt-1.log"):
        (logs / name).write_text("log\n")
    for name in (f"{old}.attempt-1.log", f"{waiting}.attempt-1.log"):
        when = (logs / name).stat().st_mtime - stale
        os.utime(logs / name, (when, when))

    pruned = retention.prune(queue_settings, now=now_ms())

    assert pruned.jobs == [old]
    assert pruned.logs == [f"{old}.attempt-1.log"]
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [f"{waiting}.attempt-1.log", "recent.attempt-1.log"]
    )
    with read_session(queue_settings.database_url) as session:
        assert list(session.scalars(select(TrainingJob.id))) == [waiting]
        assert session.scalar(select(func.count()).select_from(TrainingAttempt)) == 0


# --- secrets ------------------------------------------------------------------------------------


def test_the_child_gets_neither_the_api_key_nor_unrelated_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ML_API_KEY", "parent-api-key")
    monkeypatch.setenv("ML_DATABASE_URL", "postgresql://tbml:dbpass@db/tbml")
    monkeypatch.setenv("SOME_OTHER_TOKEN", "unrelated")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "worker")
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "1")
    settings = make_settings(tmp_path, api_key="settings-api-key")

    env = child_environment(settings, extra={"TBML_JOB_ID": "BTC_lstm_1"})

    assert "ML_API_KEY" not in env
    assert "ML_DATABASE_URL" not in env
    assert "SOME_OTHER_TOKEN" not in env
    assert not [v for v in env.values() if "api-key" in v or "dbpass" in v]
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["MLFLOW_TRACKING_USERNAME"] == "worker"
    assert env["TBML_SMOKE_SECONDS"] == "1"
    assert env["ML_TRAINING_ENTRY_POINT"] == "smoke"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["HOME"] == os.environ["HOME"]


def test_job_errors_lose_url_passwords_and_secret_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-pass-9")
    settings = make_settings(tmp_path, api_key="key-abc-123")
    text = (
        "could not connect to postgresql+psycopg://tbml:s3cr%40t@db:5432/tbml\n"
        "header X-API-Key: key-abc-123; auth mlflow-pass-9 for http://u:p@mlflow:5000/api"
    )

    masked = redact(text, secrets=secret_values(settings))

    assert masked == (
        "could not connect to postgresql+psycopg://tbml:***@db:5432/tbml\n"
        "header X-API-Key: ***; auth *** for http://u:***@mlflow:5000/api"
    )
