"""MLflow experiments shared by training, evaluation and the queue: where their artifacts go.

With a local store (`sqlite:///...`) artifacts live under `settings.artifact_root`. A tracking
server (`http(s)://`, started with `--serve-artifacts`) chooses for itself (`mlflow-artifacts:/`),
so every client uploads to and downloads from the server: a `file://` location would send a
worker's artifacts to its own disk, where API replicas on other machines cannot read them.
MLflow is imported inside the functions (it takes seconds to import).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pipelines.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

_SERVER_SCHEMES = ("http", "https")


def is_tracking_server(uri: str) -> bool:
    """Whether `uri` names an `mlflow server` (which stores artifacts itself) or a local store."""
    return uri.split(":", 1)[0].lower() in _SERVER_SCHEMES


def artifact_location(settings: Settings, name: str) -> str | None:
    """Where a new experiment's artifacts go: under the artifact root, or the server's choice."""
    if is_tracking_server(settings.tracking_uri):
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return (settings.artifact_root / slug).as_uri()


def ensure_experiment(client: MlflowClient, *, name: str, settings: Settings) -> str:
    """The id of experiment `name`, created at `artifact_location` if it does not exist."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(
            client.create_experiment(name, artifact_location=artifact_location(settings, name))
        )
    except MlflowException:
        # Another process (the queue, a second training) created it since the lookup.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)
