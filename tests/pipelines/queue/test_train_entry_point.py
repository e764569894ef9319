"""The queue running the real `train` entry point (not the smoke stand-in) on ingested candles.

This is the contract between the queue and the training: the job's parameters, the settings
the scheduler runs on and the candles under its data directory all reach the training run.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mlflow import MlflowClient

from pipelines.queue.runtime import TrainingScheduler
from pipelines.settings import Settings
from tests.conftest import write_newer_candles
from tests.pipelines.queue.conftest import wait_for_status


@pytest.mark.slow
def test_a_queued_training_runs_train_with_the_settings_and_the_ingested_candles(
    tracked_settings: Settings, start_scheduler: Callable[..., TrainingScheduler]
) -> None:
    newest = write_newer_candles(tracked_settings.data_dir, hours=48)
    settings = tracked_settings.model_copy(
        update={
            "training_entry_point": "train",
            "lstm_units": 7,
            "lstm_layers": 1,
            "sequence_length": 12,
        }
    )
    scheduler = start_scheduler(settings)

    result = scheduler.queue.enqueue(
        pair="BTC", params={"epochs": 1, "max_rows": 500}, requested_by="cli"
    )
    job = wait_for_status(scheduler.queue, result.job_id, "succeeded", timeout=240)

    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(str(job.run_id))
    assert run.data.params["units"] == "7"  # the setting: the job did not name it
    assert run.data.params["epochs"] == "1"  # the job's own parameter wins
    assert run.data.params["max_rows"] == "500"
    assert run.data.tags["data_range"].endswith(newest)
    assert run.data.tags["tbml.requested_by"] == "cli"
    assert job.registered_version == "1"
