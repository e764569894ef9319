"""Faults survived with real `mlflow run` children of `smoke`: a time limit, an unreachable
tracking store, and a cancel after a promotion that must not lose production."""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from pipelines import tracking
from pipelines.queue import lease
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.dispatcher import Dispatcher
from pipelines.queue.schemas import JobView
from pipelines.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

pytestmark = pytest.mark.slow

WORKER = "fault-test-worker"
MakeDispatcher = Callable[[Settings], Dispatcher]


@pytest.fixture
def make_dispatcher() -> Iterator[MakeDispatcher]:
    """A dispatcher holding the lease, driven by the test's own ticks; its child killed after."""
    made: list[Dispatcher] = []

    def make(settings: Settings) -> Dispatcher:
        assert lease.acquire(settings.database_url, holder=WORKER, ttl_ms=3_600_000, now=now_ms())
        dispatcher = Dispatcher(
            settings,
            worker_id=WORKER,
            holds_lease=lambda: True,
            schedule_retry=lambda _job, _at: None,
            on_finished=lambda _view: None,
            on_child_exit=lambda: None,
        )
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.abandon("test over")


def _drive(
    dispatcher: Dispatcher,
    check: Callable[[], object],
    *,
    timeout: float = 120.0,
) -> object:
    """Tick until `check()` answers something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        dispatcher.tick()
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {check}")
        time.sleep(0.1)


def _until_status(
    dispatcher: Dispatcher, queue: TrainingQueue, job_id: str, status: str
) -> JobView:
    def check() -> JobView | None:
        job = queue.get_job(job_id=job_id)
        return job if job.status == status else None

    found = _drive(dispatcher, check)
    assert isinstance(found, JobView)
    return found


def _client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _stage(client: MlflowClient, version: str) -> str | None:
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return str(client.get_model_version("BTC-lstm", version).current_stage)
        except MlflowException:
            return None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_attempt_over_the_time_limit_is_killed_and_fails_as_timed_out(
    tracked_settings: Settings,
    make_dispatcher: MakeDispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "120")
    settings = tracked_settings.model_copy(
        update={"training_timeout_ms": 3_000, "training_max_attempts": 1}
    )
    dispatcher = make_dispatcher(settings)
    queue = TrainingQueue(settings)
    job_id = queue.enqueue(pair="BTC").job_id
    started = time.monotonic()

    job = _until_status(dispatcher, queue, job_id, "failed")

    assert time.monotonic() - started < 60
    assert job.error is not None
    assert job.error.startswith("timed out after 3 s")
    assert [a.outcome for a in job.attempt_history] == ["failed"]
    assert dispatcher.running is None


def test_an_unreachable_tracking_store_does_not_use_up_attempts(
    queue_settings: Settings,
    make_dispatcher: MakeDispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    settings = queue_settings.model_copy(
        update={
            "tracking_uri": f"http://tbml:hunter22@127.0.0.1:{_closed_port()}",
            "training_max_attempts": 1,
            "training_retry_backoff_ms": 0,
        }
    )
    dispatcher = make_dispatcher(settings)
    queue = TrainingQueue(settings)
    job_id = queue.enqueue(pair="BTC").job_id

    for _ in range(3):  # three starts, each refused by the tracking store
        dispatcher.tick()

    job = queue.get_job(job_id=job_id)
    assert job.status == "queued"
    assert (job.attempts, job.attempt_history) == (0, [])
    assert job.error is not None
    assert job.error.startswith("could not start")
    assert "hunter22" not in job.error


def test_cancelling_after_a_promotion_restores_the_previous_production_version(
    tracked_settings: Settings,
    make_dispatcher: MakeDispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TBML_SMOKE_REGISTER", "1")
    monkeypatch.setenv("TBML_SMOKE_PROMOTE", "1")
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "0")
    dispatcher = make_dispatcher(tracked_settings)
    queue = TrainingQueue(tracked_settings)
    client = _client(tracked_settings)
    first = queue.enqueue(pair="BTC").job_id
    _until_status(dispatcher, queue, first, "succeeded")
    assert tracking.production_version(client, name="BTC-lstm") == "1"

    monkeypatch.setenv("TBML_SMOKE_SECONDS", "120")
    second = queue.enqueue(pair="BTC").job_id
    _drive(dispatcher, lambda: _stage(client, "2") == "Production")  # promoted, v1 archived
    assert queue.cancel(job_id=second, reason="bad data").status == "cancelling"
    _until_status(dispatcher, queue, second, "cancelled")

    assert tracking.production_version(client, name="BTC-lstm") == "1"
    assert (_stage(client, "1"), _stage(client, "2")) == ("Production", "Archived")
    rolled_back = client.get_model_version("BTC-lstm", "2")
    assert rolled_back.tags[tracking.TAG_ROLLED_BACK] == "true"
    assert "restored to version 1" in rolled_back.tags[tracking.TAG_ROLLED_BACK_REASON]
