"""Where runs go: tracking URI and experiments from settings, and the run a training writes into.

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
