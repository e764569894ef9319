"""Queue fixtures: fast settings, a migrated service database, an MLflow store, a scheduler."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from pipelines.db import migrate, read_session
from pipelines.queue.api import TrainingQueue
from pipelines.queue.runtime import TrainingScheduler
from pipelines.queue.schemas import JobView
from pipelines.queue.tables import TrainingJob
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
        "enabled_models": ["lstm"],
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


def wait_for_status(
    queue: TrainingQueue, job_id: str, status: str, timeout: float = 120
) -> JobView:
    """The job once it has `status`; fail the test after `timeout` s."""

    def check() -> JobView | None:
        job = queue.get_job(job_id=job_id)
        return job if job.status == status else None

    found = wait_until(check, timeout=timeout)
    assert isinstance(found, JobView)
    return found


def smoke_tree(database_url: str, job_id: str) -> list[psutil.Process] | None:
    """The job's training child and its descendants once its smoke process runs; else None."""
    with read_session(database_url) as session:
        job = session.get(TrainingJob, job_id)
        pid = job.pid if job is not None and job.status == "training" else None
    if pid is None:
        return None
    try:
        leader = psutil.Process(pid)
        tree = [leader, *leader.children(recursive=True)]
        running = any("pipelines.queue.smoke" in " ".join(p.cmdline()) for p in tree)
    except psutil.NoSuchProcess:
        return None
    return tree if running else None


def wait_for_smoke_tree(settings: Settings, job_id: str) -> list[psutil.Process]:
    """`smoke_tree`, once there is one."""
    found = wait_until(lambda: smoke_tree(settings.database_url, job_id), timeout=120)
    assert isinstance(found, list)
    return found


def alive(processes: list[psutil.Process]) -> list[int]:
    """The pids of `processes` still running (zombies count as gone)."""
    pids = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                pids.append(process.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


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
