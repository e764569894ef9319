"""Chaos: the scheduler process (a real `tbml worker`) SIGKILLed at random points, restarted.

Each round starts a worker on the same service database and MLflow store, lets it run for a
seeded random while (before its first claim, just after one, mid-training, or between a
training's registering and promoting, which the smoke entry point widens on purpose), SIGKILLs
it (its training child is left orphaned, as after a crash) and checks the invariants: never two
trainings at once (job rows, and a lock file every smoke training holds), every job in one known
state, no `production` alias lost, no job or attempt row lost.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pipelines.db import migrate, read_session
from pipelines.queue import lease
from pipelines.queue.api import TrainingQueue
from pipelines.queue.errors import DuplicateJobError
from pipelines.queue.tables import (
    QUEUED,
    SUCCEEDED,
    TERMINAL_STATUSES,
    TRAINING,
    TrainingAttempt,
    TrainingJob,
)
from pipelines.settings import Settings
from pipelines.tracking import PRODUCTION_ALIAS, registered_model_name
from tests.scaleout.conftest import BIN, Processes, Started, wait_for

pytestmark = pytest.mark.slow

ROUNDS = 20
SEED = 20_261_202
PAIRS = ("BTC", "ETH", "XMR", "RVN")


class World:
    """The shared stores, and what the invariants have seen so far."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = root / "training.lock"
        self.settings = Settings(
            _env_file=None,
            data_dir=root / "data",
            database_url=f"sqlite:///{root / 'service.db'}",
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            artifact_root=root / "mlruns",
            training_cooldown_ms=0,
        )
        self.env = {
            **os.environ,
            "ML_DATA_DIR": str(root / "data"),
            "ML_DATABASE_URL": self.settings.database_url,
            "MLFLOW_TRACKING_URI": self.settings.tracking_uri,
            "ML_ARTIFACT_ROOT": str(root / "mlruns"),
            "ML_TRAINING_ENTRY_POINT": "smoke",
            "ML_TRAINING_COOLDOWN": "0",
            "ML_TRAINING_RETRY_BACKOFF": "0",
            "ML_TRAINING_MAX_ATTEMPTS": "20",
            "ML_QUEUE_PROCESSING_INTERVAL": "200",
            "ML_SCHEDULER_LEASE": "1500",
            # The queue is under test; the candle feed (no exchange here) and the retraining
            # policy (which reads the registry at each takeover) are tested on their own.
            "ML_FEED": "false",
            "ML_RETRAIN_POLICY": "false",
            "TBML_SMOKE_TRACK": "1",
            "TBML_SMOKE_REGISTER": "1",
            "TBML_SMOKE_PROMOTE": "1",
            "TBML_SMOKE_PROMOTE_DELAY": "1.5",
            "TBML_SMOKE_SECONDS": "0.5",
            "TBML_SMOKE_MARKER": str(self.marker),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            self.env.pop(name, None)
        migrate(self.settings)
        self.queue = TrainingQueue(self.settings)
        self.jobs: set[str] = set()
        self.attempts: set[tuple[str, int]] = set()
        self.production: dict[str, str] = {}

    def fill_queue(self) -> None:
        """One active job per pair (a duplicate is refused: the pair has one already)."""
        for pair in PAIRS:
            with contextlib.suppress(DuplicateJobError):
                self.queue.enqueue(pair=pair)

    def check(self, round_: int) -> None:
        where = f"after round {round_}"
        overlap = Path(f"{self.marker}.overlap")
        assert not overlap.exists(), f"{where}: two trainings at once: {overlap.read_text()}"
        with read_session(self.settings.database_url) as session:
            jobs = list(session.scalars(select(TrainingJob)))
            attempts = {(a.job_id, a.number) for a in session.scalars(select(TrainingAttempt))}
        statuses = {job.id: job.status for job in jobs}
        assert sum(s == TRAINING for s in statuses.values()) <= 1, f"{where}: {statuses}"
        known = {QUEUED, TRAINING, *TERMINAL_STATUSES}
        assert set(statuses.values()) <= known, f"{where}: {statuses}"
        for job in jobs:
            if job.status in TERMINAL_STATUSES:
                assert job.finished_at is not None, f"{where}: {job.id} {job.status}"
        assert self.jobs <= set(statuses), f"{where}: job rows lost"
        assert self.attempts <= attempts, f"{where}: attempt rows lost"
        self.jobs |= set(statuses)
        self.attempts |= attempts
        self._check_production(where)

    def _check_production(self, where: str) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        for pair in PAIRS:
            name = registered_model_name(pair, "lstm")
            try:
                version = client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
            except MlflowException:
                assert name not in self.production, f"{where}: {name} lost its production alias"
                continue
            self.production[name] = str(version.version)


def _kill(worker: Started) -> None:
    os.kill(worker.pid, signal.SIGKILL)  # the scheduler alone: its training child lives on
    worker.process.wait(timeout=30)


def test_a_scheduler_killed_at_random_points_keeps_the_queue_invariants(
    processes: Processes, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    world = World(tmp_path)
    world.fill_queue()
    world.check(0)
    started = time.monotonic()
    holder = None
    for round_ in range(1, ROUNDS + 1):
        worker = processes.start(f"chaos-{round_}", [str(BIN / "tbml"), "worker"], env=world.env)
        # The random moment counts from when this worker holds the lease (its start-up takes
        # longer on a loaded machine), so the kills land among claims and trainings.
        wait_for(
            lambda previous=holder: (
                lease.current(world.settings.database_url).holder not in (None, previous)
            ),
            timeout=60,
            what=f"worker chaos-{round_} to take the dispatch lease",
            watch=[worker],
        )
        holder = lease.current(world.settings.database_url).holder
        # A takeover recovers the orphaned attempt before it dispatches (about 3 s measured
        # here), so the kills fall before a claim, during one, or during a training.
        time.sleep(rng.uniform(0.2, 8.0))
        _kill(worker)
        world.check(round_)
        world.fill_queue()

    # A last worker, left alone, recovers what the last kill orphaned and finishes trainings.
    final = processes.start("chaos-final", [str(BIN / "tbml"), "worker"], env=world.env)

    def finished_one() -> bool:
        world.check(ROUNDS + 1)
        with read_session(world.settings.database_url) as session:
            done = session.scalars(select(TrainingJob.id).where(TrainingJob.status == SUCCEEDED))
            return len(list(done)) > 0 and len(world.production) > 0

    try:
        wait_for(
            finished_one,
            timeout=120,
            what="a training to succeed and promote after the chaos",
            watch=[final],
        )
    finally:
        processes.stop(final)
    world.check(ROUNDS + 2)
    summary: dict[str, Any] = {
        "seconds": round(time.monotonic() - started),
        "jobs": len(world.jobs),
        "attempts": len(world.attempts),
        "production": world.production,
    }
    assert len(world.attempts) >= ROUNDS // 2, summary  # the kills did land among trainings
