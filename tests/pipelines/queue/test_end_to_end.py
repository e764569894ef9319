"""One real training through the queue: the `train` entry point, end to end."""

from __future__ import annotations

import pytest

from pipelines.queue.runtime import TrainingScheduler
from pipelines.queue.schemas import JobView
from pipelines.settings import Settings
from pipelines.tracking import registered_model_name
from tests.pipelines.queue.conftest import wait_until

pytestmark = pytest.mark.slow


def test_a_queued_job_trains_registers_and_reports_through_the_real_entry_point(
    tracked_settings: Settings,
) -> None:
    settings = tracked_settings.model_copy(update={"training_entry_point": "train"})
    scheduler = TrainingScheduler(settings).start()
    finished: list[JobView] = []
    scheduler.on_training_finished(finished.append)
    try:
        job_id = scheduler.queue.enqueue(
            pair="BTC",
            params={
                "epochs": 1,
                "max_rows": 1500,
                "sequence_length": 12,
                "units": 4,
                "layers": 1,
                "batch_size": 64,
            },
        ).job_id
        wait_until(lambda: finished, timeout=570, interval=0.5)
    finally:
        scheduler.shutdown()

    job = finished[0]
    assert job.id == job_id
    assert job.status == "succeeded", job.error
    assert job.registered_model == registered_model_name("BTC", "lstm")
    assert job.registered_version is not None
    assert job.promotion in {"promoted", "rejected"}
    assert job.promotion_reason
    assert job.beats_baseline in {True, False}
    from mlflow import MlflowClient  # imported here: seconds, and only slow tests need it

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version(job.registered_model, job.registered_version)
    assert version.run_id == job.run_id
    run = client.get_run(job.run_id or "")
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "1"
