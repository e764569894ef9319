"""Queue fixtures: fast settings, a migrated service database, an MLflow store, a scheduler."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipelines.db import migrate
from pipelines.queue.api import TrainingQueue
from pipelines.queue.runtime import TrainingScheduler
from pipelines.settings import Settings
from tests.conftest import BUNDLED

# Small intervals keep the suite fast; the rules they exercise are the production ones.
FAST = {
    "queue_processing_interval_ms": 200,
    "training_cooldown_ms": 0,
    "training_retry_backoff_ms": 300,
    "training_retry_backoff_max_ms": 2_000,
    "scheduler_lease_ms": 2_000,
    "training_entry_point": "smoke",
    "training_max_attempts": 3,
}


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings with every store under `tmp_path` and the fast queue timings."""
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "bundled_data_dir": BUNDLED,
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "artifact_root": tmp_path / "mlruns",
        "database_url": f"sqlite:///{tmp_path / 'service.db'}",
        **FAST,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def wait_until(
    predicate: Callable[[], object], *, timeout: float = 60.0, interval: float = 0.05
) -> object:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


@pytest.fixture
def queue_settings(tmp_path: Path) -> Settings:
    """Fast queue settings over a migrated service database in `tmp_path`."""
    settings = make_settings(tmp_path)
    migrate(settings)
    return settings


@pytest.fixture
def queue(queue_settings: Settings) -> TrainingQueue:
    """The domain API on the test database (no scheduler)."""
    return TrainingQueue(queue_settings)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema created once (MLflow's migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracked_settings(queue_settings: Settings, mlflow_template: Path) -> Settings:
    """`queue_settings` with a fresh MLflow store of its own (copied from the template)."""
    target = Path(queue_settings.tracking_uri.removeprefix("sqlite:///"))
    shutil.copyfile(mlflow_template, target)
    return queue_settings


@pytest.fixture
def start_scheduler(
    tracked_settings: Settings,
) -> Iterator[Callable[..., TrainingScheduler]]:
    """Start real schedulers (APScheduler, lease thread, smoke children); shut them all down."""
    started: list[TrainingScheduler] = []

    def start(settings: Settings | None = None) -> TrainingScheduler:
        scheduler = TrainingScheduler(settings or tracked_settings).start()
        started.append(scheduler)
        return scheduler

    yield start
    for scheduler in reversed(started):
        scheduler.shutdown()
