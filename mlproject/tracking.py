"""What a training writes to MLflow: its run, its registered model and versions, the alias.

One registered model per pair and architecture (`pipelines.tracking.registered_model_name`,
e.g. `BTC-lstm`). "Production" is the alias `production`; the legacy stage "Production" is
mirrored while MLflow still has stages, so `models:/BTC-lstm@production` and the UI's stage
column agree. The names and tags that others read back are `pipelines.tracking`'s.

Nothing is set at import time. A run started by `mlflow run` (or by the training queue) is
named by MLFLOW_RUN_ID in the environment and is resumed; otherwise a run is created in the
experiment named by settings, whose artifacts live under `settings.artifact_root`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.tracking import ensure_experiment

logger = logging.getLogger(__name__)


def client_for(settings: Settings) -> MlflowClient:
    """Point the fluent API at the settings' store and return a client of the same store."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri)


@contextmanager
def active_run(settings: Settings, *, experiment: str, run_name: str) -> Iterator[mlflow.ActiveRun]:
    """Resume the run named by MLFLOW_RUN_ID, or start one in `experiment`.

    The run ends FINISHED when the block completes and FAILED when it raises.
    """
    client = client_for(settings)
    if os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run()
    else:
        experiment_id = ensure_experiment(client, name=experiment, settings=settings)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
    with run:
        yield run


def git_commit() -> tuple[str, bool]:
    """The checked-out commit of the project and whether the tree has local changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, bool(status.strip())


def ensure_registered_model(client: MlflowClient, *, name: str, pair: str, model_type: str) -> None:
    """Create the registered model `name` unless it exists."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            tags={"pair": pair, "model_type": model_type},
            description=f"{model_type} direction model of {pair} (probability of up)",
        )


def register_version(
    client: MlflowClient,
    *,
    name: str,
    model_uri: str,
    model_id: str,
    run_id: str,
    tags: dict[str, str],
    description: str,
) -> str:
    """Register the logged model `model_id` of run `run_id` as a new version of `name`."""
    version = client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags=tags,
        description=description,
        model_id=model_id,
    )
    return str(version.version)
