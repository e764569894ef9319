"""`tbml worker` as real processes: a SIGKILL mid-training, and a second worker by mistake."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from pipelines.db import read_session
from pipelines.queue import lease
from pipelines.queue.api import TrainingQueue
from pipelines.queue.childenv import settings_environment
from pipelines.queue.schemas import JobView
from pipelines.queue.tables import TrainingAttempt
from pipelines.settings import Settings
from tests.pipelines.queue.conftest import (
    alive,
    wait_for_smoke_tree,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.slow

TBML = Path(sys.executable).parent / "tbml"


class Workers:
    """Starts `tbml worker` processes on the test's settings and stops what is left."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []
        self._count = itertools.count(1)

    def start(self, **smoke: str) -> subprocess.Popen[bytes]:
        """A worker whose training children see the `TBML_SMOKE_*` variables given."""
        env = {**os.environ, **settings_environment(self.settings), "TBML_SMOKE_TRACK": "0"}
        env.update({f"TBML_SMOKE_{name.upper()}": value for name, value in smoke.items()})
        log = self.tmp_path / f"worker-{next(self._count)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(TBML), "worker"], cwd=self.tmp_path, env=env, stdout=out, stderr=out
            )
        self.started.append(process)
        return process

    def holder_pid(self) -> int | None:
        """The pid in the dispatch lease's holder id (`host:pid:random`), if held."""
        state = lease.current(self.settings.database_url)
        return int(state.holder.split(":")[1]) if state.holder else None

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def workers(tracked_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tracked_settings, tmp_path)
    yield started
    started.stop_all()


def _job(settings: Settings, job_id: str) -> JobView:
    return TrainingQueue(settings).get_job(job_id=job_id)


def test_a_worker_killed_mid_training_is_recovered_by_the_next_one(
    workers: Workers, tracked_settings: Settings
) -> None:
    settings = tracked_settings
    first = workers.start(seconds="300")
    wait_until(lambda: workers.holder_pid() == first.pid, timeout=60)
    job_id = TrainingQueue(settings).enqueue(pair="BTC").job_id
    tree = wait_for_smoke_tree(settings, job_id)
    run_id = _job(settings, job_id).run_id
    assert run_id is not None

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    # The scheduler died; its training child (its own process group) lives on, orphaned.
    assert alive(tree) == [p.pid for p in tree]
    assert _job(settings, job_id).status == "training"

    second = workers.start(seconds="0.2")
    wait_until(lambda: workers.holder_pid() == second.pid, timeout=60)
    job = wait_for_status(TrainingQueue(settings), job_id, "succeeded", timeout=180)

    assert alive(tree) == []  # the orphan was killed, not left to train beside the new one
    from mlflow import MlflowClient  # imported here: seconds, and only slow tests need it

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    assert client.get_run(run_id).info.status == "FAILED"
    assert [a.outcome for a in job.attempt_history] == ["interrupted", "succeeded"]
    assert job.attempts == 2  # the interrupted attempt counts
    assert job.attempt_history[0].run_id == run_id
    assert str(first.pid) in (job.attempt_history[0].error or "")


def test_a_second_worker_refuses_to_dispatch_while_the_first_holds_the_lease(
    workers: Workers, tracked_settings: Settings
) -> None:
    settings = tracked_settings
    first = workers.start(seconds="1")
    wait_until(lambda: workers.holder_pid() == first.pid, timeout=60)
    second = workers.start(seconds="1")
    queue = TrainingQueue(settings)
    job_ids = [queue.enqueue(pair=pair).job_id for pair in ("BTC", "ETH", "XMR")]
    jobs = [wait_for_status(queue, job_id, "succeeded", timeout=240) for job_id in job_ids]

    with read_session(settings.database_url) as session:
        dispatchers = set(session.scalars(select(TrainingAttempt.worker_id)))
    assert len(dispatchers) == 1
    assert next(iter(dispatchers)).split(":")[1] == str(first.pid)
    assert second.poll() is None  # alive, on standby
    ordered = sorted(jobs, key=lambda job: job.started_at or 0)
    for earlier, later in itertools.pairwise(ordered):
        assert (later.started_at or 0) >= (earlier.finished_at or 0)

    # A clean stop of the first releases the lease; the standby takes over.
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    wait_until(lambda: workers.holder_pid() == second.pid, timeout=30)
    later_job = queue.enqueue(pair="RVN").job_id
    job = wait_for_status(TrainingQueue(settings), later_job, "succeeded", timeout=120)
    with read_session(settings.database_url) as session:
        worker = session.scalar(
            select(TrainingAttempt.worker_id).where(TrainingAttempt.job_id == job.id)
        )
    assert worker is not None
    assert worker.split(":")[1] == str(second.pid)
