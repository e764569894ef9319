"""What the queue does in MLflow: create a job's run, read its report, end or undo it.

MLflow is imported inside the functions: it takes seconds to import, and only a scheduler that
dispatches needs it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pipelines import experiments
from pipelines.queue.transitions import RunReport
from pipelines.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

TAG_JOB_ID = "tbml.job_id"
TAG_ATTEMPT = "tbml.attempt"
# The contract with the `train` entry point (notes/queue-training-contract.md).
TAG_REGISTERED_MODEL = "tbml.registered_model"
TAG_REGISTERED_VERSION = "tbml.registered_version"
TAG_PROMOTION = "tbml.promotion"
TAG_PROMOTION_REASON = "tbml.promotion_reason"
TAG_BEATS_BASELINE = "tbml.beats_baseline"


def client_for(settings: Settings) -> MlflowClient:
    """A client on the settings' tracking and registry store (no global MLflow state)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ensure_experiment(client: MlflowClient, settings: Settings) -> str:
    """The id of the settings' experiment, created (at `artifact_location`) if new."""
    return experiments.ensure_experiment(client, name=settings.experiment_name, settings=settings)


def create_project_run(
    settings: Settings,
    *,
    run_name: str,
    pair: str,
    model_type: str,
    tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Create a run of the project's `train` entry point, for a child process to fill.

    Returns (experiment id, run id). This is what `mlflow run` does before it runs the entry
    point; doing it here lets the caller know the run before the child starts, watch it, and
    end it whatever the child does.
    """
    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import (
        MLFLOW_PROJECT_ENTRY_POINT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
    )

    client = client_for(settings)
    experiment_id = ensure_experiment(client, settings)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={
            MLFLOW_SOURCE_NAME: str(PROJECT_ROOT),
            MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.PROJECT),
            MLFLOW_PROJECT_ENTRY_POINT: settings.training_entry_point,
            "tbml.pair": pair,
            "tbml.model_type": model_type,
            **(tags or {}),
        },
    )
    return experiment_id, str(run.info.run_id)


def create_job_run(
    settings: Settings, *, job_id: str, attempt: int, pair: str, model_type: str
) -> tuple[str, str]:
    """Create the MLflow run an attempt's child will fill; return (experiment id, run id)."""
    return create_project_run(
        settings,
        run_name=f"{job_id}-attempt-{attempt}",
        pair=pair,
        model_type=model_type,
        tags={TAG_JOB_ID: job_id, TAG_ATTEMPT: str(attempt)},
    )


def read_report(settings: Settings, run_id: str) -> RunReport:
    """The outcome a finished training wrote into its run's tags."""
    tags = client_for(settings).get_run(run_id).data.tags
    beats = tags.get(TAG_BEATS_BASELINE)
    return RunReport(
        registered_model=tags.get(TAG_REGISTERED_MODEL),
        registered_version=tags.get(TAG_REGISTERED_VERSION),
        promotion=tags.get(TAG_PROMOTION),
        promotion_reason=tags.get(TAG_PROMOTION_REASON),
        beats_baseline=None if beats is None else beats.strip().lower() == "true",
    )


def end_run(settings: Settings, run_id: str, *, status: str) -> bool:
    """End the run with `status` (KILLED, FAILED, FINISHED) unless it has already ended."""
    from mlflow.entities import RunStatus

    client = client_for(settings)
    # RunInfo.status is the status's name ("KILLED"); is_terminated takes its number.
    if RunStatus.is_terminated(RunStatus.from_string(client.get_run(run_id).info.status)):
        return False
    client.set_terminated(run_id, status=status)
    return True


def force_status(settings: Settings, run_id: str, *, status: str) -> None:
    """Set the run's status even if it has ended (a killed run is KILLED, whatever it said)."""
    client_for(settings).set_terminated(run_id, status=status)


def delete_versions_of_run(settings: Settings, run_id: str) -> list[tuple[str, str]]:
    """Delete every registered model version made from this run; return (name, version)s."""
    client = client_for(settings)
    deleted = []
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.delete_model_version(version.name, version.version)
        deleted.append((str(version.name), str(version.version)))
        logger.info("deleted %s version %s (its run %s was killed)", *deleted[-1], run_id)
    return deleted
