"""The scheduler for real: APScheduler, the SQLite file, `mlflow run` children of `smoke`."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd
import psutil
import pytest
from sqlalchemy import select, text

from pipelines import tracking
from pipelines.db import get_engine, read_session
from pipelines.lifecycle.retraining import Production
from pipelines.queue import lease, transitions
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.runtime import DISPATCH_JOB_ID, POLICY_CHORE, TrainingScheduler
from pipelines.queue.schemas import JobView
from pipelines.queue.tables import TrainingAttempt
from pipelines.settings import Settings
from tests.conftest import write_newer_candles
from tests.pipelines.queue.conftest import (
    alive,
    wait_for_smoke_tree,
    wait_for_status,
    wait_until,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

pytestmark = pytest.mark.slow

Start = Callable[..., TrainingScheduler]


def _job(queue: TrainingQueue, job_id: str) -> JobView:
    return queue.get_job(job_id=job_id)


def _client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient  # imported here: seconds, and only slow tests need it

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def test_a_job_trains_in_a_child_and_its_report_lands_in_the_job_row(
    start_scheduler: Start, tracked_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tracked_settings.model_copy(update={"training_cooldown_ms": 30 * 60_000})
    scheduler = start_scheduler(settings)
    finished: list[JobView] = []
    scheduler.on_training_finished(finished.append)
    job_id = scheduler.queue.enqueue(pair="BTC", params={"epochs": 3}).job_id

    job = wait_for_status(scheduler.queue, job_id, "succeeded")
    assert job.attempts == 1
    assert [a.outcome for a in job.attempt_history] == ["succeeded"]
    assert job.run_id is not None
    run = _client(settings).get_run(job.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TAG_JOB_ID] == job_id
    assert run.data.metrics["smoke_epochs"] == 3.0  # the child ran in the queue's run
    # The contract's tags were read into the row.
    assert (job.promotion, job.beats_baseline) == ("not_registered", False)
    # The service's callback heard of it, and the cooldown started.
    wait_until(lambda: finished)
    assert finished[0].id == job_id
    verdict = scheduler.queue.can_train(pair="BTC")
    assert (verdict.reason, verdict.cooldown_remaining_minutes) == ("Cooldown active", 30)


def test_cancel_kills_the_process_tree_ends_the_run_killed_and_registers_nothing(
    start_scheduler: Start, tracked_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "300")
    monkeypatch.setenv("TBML_SMOKE_REGISTER", "1")
    scheduler = start_scheduler()
    job_id = scheduler.queue.enqueue(pair="ETH").job_id
    processes = wait_for_smoke_tree(scheduler.settings, job_id)
    run_id = _job(scheduler.queue, job_id).run_id
    assert run_id is not None
    client = _client(tracked_settings)
    # The child registered a version before it was cancelled.
    wait_until(lambda: client.search_model_versions(f"run_id = '{run_id}'"), timeout=120)

    result = scheduler.queue.cancel(job_id=job_id, reason="User requested cancellation")
    assert result.status == "cancelling"
    job = wait_for_status(scheduler.queue, job_id, "cancelled", timeout=30)

    assert alive(processes) == []
    assert len(processes) >= 2  # mlflow run and the smoke under it
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.search_model_versions(f"run_id = '{run_id}'") == []
    assert job.cancel_reason == "User requested cancellation"
    assert [a.outcome for a in job.attempt_history] == ["cancelled"]


def test_emergency_stop_kills_the_training_cancels_the_queue_and_pauses_until_resume(
    start_scheduler: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "300")
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    scheduler = start_scheduler()
    queue = scheduler.queue
    running = queue.enqueue(pair="BTC").job_id
    processes = wait_for_smoke_tree(scheduler.settings, running)
    waiting = [queue.enqueue(pair="ETH").job_id, queue.enqueue(pair="XMR").job_id]

    result = queue.emergency_stop()
    assert result.stopped_jobs == [running]
    wait_for_status(queue, running, "cancelled", timeout=30)
    assert alive(processes) == []
    assert [_job(queue, job_id).status for job_id in waiting] == ["cancelled", "cancelled"]

    later = queue.enqueue(pair="RVN").job_id
    time.sleep(2)  # ten dispatcher ticks at 200 ms
    assert _job(queue, later).status == "queued"
    queue.resume()
    wait_until(lambda: _job(queue, later).status == "training", timeout=30)
    queue.cancel(job_id=later)
    wait_for_status(queue, later, "cancelled", timeout=60)


def test_failed_training_is_retried_with_backoff_and_every_attempt_is_kept(
    start_scheduler: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    monkeypatch.setenv("TBML_SMOKE_FAIL_ATTEMPTS", "2")
    scheduler = start_scheduler()
    job_id = scheduler.queue.enqueue(pair="BTC").job_id

    job = wait_for_status(scheduler.queue, job_id, "succeeded", timeout=180)
    history = job.attempt_history
    assert [a.outcome for a in history] == ["failed", "failed", "succeeded"]
    assert [a.exit_code for a in history[:2]] == [1, 1]  # `mlflow run` exits 1 on failure
    assert all(a.error and "exit code 1" in a.error for a in history[:2])
    assert len({a.run_id for a in history}) == 3  # a fresh MLflow run per attempt
    # Backoff doubles from 300 ms: each retry starts at least that long after the failure.
    assert history[1].started_at - (history[0].finished_at or 0) >= 300
    assert history[2].started_at - (history[1].finished_at or 0) >= 600
    assert job.error is None


def test_a_training_that_keeps_failing_ends_failed_after_the_last_attempt(
    start_scheduler: Start, tracked_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    monkeypatch.setenv("TBML_SMOKE_FAIL", "1")
    scheduler = start_scheduler(tracked_settings.model_copy(update={"training_max_attempts": 2}))
    job_id = scheduler.queue.enqueue(pair="XMR").job_id
    job = wait_for_status(scheduler.queue, job_id, "failed", timeout=180)
    assert [a.outcome for a in job.attempt_history] == ["failed", "failed"]
    assert job.error is not None
    assert "exit code 1" in job.error
    assert _client(tracked_settings).get_run(job.run_id or "").info.status == "FAILED"


def test_one_training_at_a_time_by_priority_then_age_and_cooldown_defers(
    tracked_settings: Settings, start_scheduler: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    settings = tracked_settings.model_copy(update={"training_cooldown_ms": 60_000})
    queue = TrainingQueue(settings)
    # Queued before any scheduler runs, so the order is the queue's, not arrival timing.
    normal_old = queue.enqueue(pair="BTC", priority=5).job_id
    normal_new = queue.enqueue(pair="ETH", priority=5).job_id
    urgent = queue.enqueue(pair="XMR", priority=1).job_id
    start_scheduler(settings)
    first = [
        wait_for_status(queue, job_id, "succeeded", timeout=180) for job_id in (urgent, normal_old)
    ]
    first.append(wait_for_status(queue, normal_new, "succeeded", timeout=180))
    ordered = sorted(first, key=lambda job: job.started_at or 0)
    assert [job.id for job in ordered] == [urgent, normal_old, normal_new]
    for earlier, later in itertools.pairwise(ordered):
        assert (later.started_at or 0) >= (earlier.finished_at or 0)  # never two at once

    # BTC:lstm is cooling down: a new request is queued, and says until when.
    again = queue.enqueue(pair="BTC", priority=1)
    assert (again.can_train.reason, again.can_train.cooldown_remaining_minutes) == (
        "Cooldown active",
        1,
    )
    # A lower-priority job of another pair goes first: the cooling job is skipped, not blocking.
    other_id = queue.enqueue(pair="RVN", priority=9).job_id
    other = wait_for_status(queue, other_id, "succeeded", timeout=120)
    time.sleep(1)  # five more dispatcher ticks with the slot free
    assert _job(queue, again.job_id).status == "queued"
    queue.clear_cooldowns(pair="BTC", model_type="lstm")
    last = wait_for_status(queue, again.job_id, "succeeded", timeout=120)
    assert (last.started_at or 0) >= (other.finished_at or 0)


def test_the_retraining_policy_chore_queues_a_scheduled_retraining_while_holding_the_lease(
    tracked_settings: Settings,
) -> None:
    settings = tracked_settings.model_copy(update={"policy_interval_ms": 200})
    newest = pd.Timestamp(write_newer_candles(settings.data_dir, pair="ETH", hours=24))
    production = {("ETH", "lstm"): Production("2", newest - pd.Timedelta(hours=24))}
    TrainingQueue(settings).emergency_stop()  # nothing starts: we look at the queue only
    scheduler = TrainingScheduler(
        settings, production_data_end=lambda pair, kind: production.get((pair, kind))
    ).start()
    try:

        def scheduled() -> list[str]:
            jobs = scheduler.queue.queue_status().queue.queued.jobs
            return [job.id for job in jobs if job.requested_by == "schedule"]

        job_ids = wait_until(scheduled, timeout=30)
        assert isinstance(job_ids, list)
        job = _job(scheduler.queue, job_ids[0])
        assert (job.pair, job.model_type, job.priority) == ("ETH", "lstm", 10)
        assert (job.reason or "").startswith("ETH-lstm: 24 h of new candles")
        wait_until(lambda: scheduler.background()[POLICY_CHORE].last_success, timeout=30)
        # Later looks find it still queued: skipped, no second job.
        wait_until(
            lambda: any(
                d.pair == "ETH" and d.action == "skipped" and job.id in d.reason
                for d in scheduler.queue.queue_status().queue.policy.decisions
            ),
            timeout=30,
        )
        assert scheduled() == [job.id]
    finally:
        scheduler.shutdown()


def test_leader_chores_run_only_in_the_scheduler_holding_the_lease(
    start_scheduler: Start,
) -> None:
    runs: dict[str, int] = {"first": 0, "second": 0}

    def counter(name: str) -> Callable[[], None]:
        def count() -> None:
            runs[name] += 1

        return count

    first = start_scheduler()
    first.add_leader_chore("count", counter("first"), 0.1)  # added after start
    second = TrainingScheduler(first.settings)
    second.add_leader_chore("count", counter("second"), 0.1)  # added before start
    with pytest.raises(ValueError, match="chore 'count' exists already"):
        second.add_leader_chore("count", counter("second"), 0.1)
    second.start()
    try:
        assert not second.holds_lease
        wait_until(lambda: runs["first"] >= 5, timeout=30)
        assert "count" in second.background()
        assert runs["second"] == 0
    finally:
        second.shutdown()


def test_retry_jobs_survive_a_restart_and_old_interval_retrainings_are_removed(
    tracked_settings: Settings, start_scheduler: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    monkeypatch.setenv("TBML_SMOKE_FAIL_ATTEMPTS", "1")
    settings = tracked_settings.model_copy(update={"training_retry_backoff_ms": 4_000})
    # What an earlier version's job store holds: an interval retraining whose function is gone.
    with get_engine(settings.database_url).begin() as connection:
        connection.execute(
            text("INSERT INTO apscheduler_jobs (id, next_run_time, job_state) VALUES (:i, 0, :s)"),
            {"i": "tbml-retrain-RVN-lstm", "s": b"not loadable any more"},
        )
    first = start_scheduler(settings)
    job_id = first.queue.enqueue(pair="BTC").job_id
    wait_until(lambda: _job(first.queue, job_id).attempts == 1, timeout=120)
    wait_until(lambda: _job(first.queue, job_id).status == "queued", timeout=120)
    first.shutdown()

    with get_engine(settings.database_url).connect() as connection:
        stored = {row[0] for row in connection.execute(text("SELECT id FROM apscheduler_jobs"))}
    assert stored == {DISPATCH_JOB_ID, f"tbml-retry-{job_id}"}

    second = start_scheduler(settings)
    job = wait_for_status(second.queue, job_id, "succeeded", timeout=120)
    assert [a.outcome for a in job.attempt_history] == ["failed", "succeeded"]


def test_shutdown_interrupts_and_requeues_the_running_training(
    tracked_settings: Settings, start_scheduler: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "300")
    scheduler = start_scheduler()
    job_id = scheduler.queue.enqueue(pair="BTC").job_id
    processes = wait_for_smoke_tree(scheduler.settings, job_id)
    scheduler.shutdown()
    assert alive(processes) == []
    job = _job(scheduler.queue, job_id)
    assert (job.status, job.attempts) == ("queued", 1)
    assert [a.outcome for a in job.attempt_history] == ["interrupted"]
    assert _client(tracked_settings).get_run(job.run_id or "").info.status == "FAILED"
    assert lease.current(tracked_settings.database_url).holder is None


def test_recovery_interrupts_an_orphaned_training_requeues_it_and_fails_its_run(
    tracked_settings: Settings, start_scheduler: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    settings = tracked_settings
    url = settings.database_url
    queue = TrainingQueue(settings)
    job_id = queue.enqueue(pair="ETH").job_id
    # The state a crashed scheduler leaves: its lease (expiring), the job `training`, an MLflow
    # run RUNNING, and its child still alive in its own process group.
    assert lease.acquire(url, holder="crashed", ttl_ms=500, now=now_ms())
    attempt = transitions.claim(url, job_id=job_id, worker_id="crashed", now=now_ms())
    assert attempt == 1
    _, run_id = tracking.create_job_run(
        settings, job_id=job_id, attempt=1, pair="ETH", model_type="lstm"
    )
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    started = psutil.Process(orphan.pid).create_time()
    transitions.record_launch(
        url,
        job_id=job_id,
        worker_id="crashed",
        attempt=1,
        run_id=run_id,
        pid=orphan.pid,
        pid_started_at=started,
    )
    wait_until(lambda: lease.current(url).expires_at < now_ms())

    scheduler = start_scheduler(settings)
    assert scheduler.holds_lease
    orphan.wait(timeout=10)  # killed by the recovery (and reaped here, its parent)
    assert orphan.returncode == -9
    assert _client(settings).get_run(run_id).info.status == "FAILED"
    job = wait_for_status(queue, job_id, "succeeded", timeout=120)
    assert job.attempts == 2
    assert [a.outcome for a in job.attempt_history] == ["interrupted", "succeeded"]
    assert "interrupted" in (job.attempt_history[0].error or "")
    assert job.attempt_history[0].run_id == run_id


def test_a_second_scheduler_in_the_same_database_stands_by(
    tracked_settings: Settings, start_scheduler: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    first = start_scheduler()
    second = start_scheduler()
    assert first.holds_lease
    assert not second.holds_lease
    job_id = second.queue.enqueue(pair="BTC").job_id
    wait_for_status(first.queue, job_id, "succeeded", timeout=120)
    with read_session(tracked_settings.database_url) as session:
        workers = set(session.scalars(select(TrainingAttempt.worker_id)))
    assert workers == {first.worker_id}
    # When the holder stops, the standby takes over and dispatches.
    first.shutdown()
    wait_until(lambda: second.holds_lease, timeout=10)
    other = second.queue.enqueue(pair="ETH").job_id
    wait_for_status(second.queue, other, "succeeded", timeout=120)
    with read_session(tracked_settings.database_url) as session:
        worker = session.scalar(
            select(TrainingAttempt.worker_id).where(TrainingAttempt.job_id == other)
        )
    assert worker == second.worker_id
    assert os.getpid() == int(second.worker_id.split(":")[1])
