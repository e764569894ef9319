"""The scale-out configuration end to end, as real processes on loopback ports.

An `mlflow server` on PostgreSQL (artifacts served through it), a PostgreSQL service database,
two API replicas (`tbml serve --no-scheduler`) and `tbml worker`. Training requests go to both
replicas at once; the checks are the issue's: one training at a time (a second worker started
by mistake included), cooldowns honoured across replicas, a newly promoted version served by
both replicas within one refresh interval, and a worker SIGKILLed mid-training recovered by a
restarted worker. The queue-rule checks use the `smoke` entry point (a real `mlflow run` child
that resumes its run on the server and sleeps); the serving checks use a real tiny model
trained with `mlflow run -e train` against the server.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import select

from pipelines.db import read_session
from pipelines.queue import lease
from pipelines.queue.tables import TrainingAttempt
from pipelines.settings import PROJECT_ROOT
from tests.pipelines.queue.conftest import alive, smoke_tree
from tests.scaleout.conftest import (
    BIN,
    MlflowServer,
    Postgres,
    Processes,
    Started,
    answers,
    free_port,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REFRESH_S = 3.0
# Once a refresh sees the new alias it still downloads the bundle through the tracking server,
# opens the ONNX session and runs a warm-up prediction; on two busy cores that takes seconds.
LOAD_ALLOWANCE_S = 6.0
COOLDOWN_MS = 600_000
TERMINAL = {"succeeded", "failed", "cancelled", "interrupted"}
# A tiny real model: seconds to train, yet the full pipeline (features, ONNX bundle, registry).
TINY_TRAINING = {
    "epochs": "1",
    "max_rows": "400",
    "sequence_length": "12",
    "units": "4",
    "layers": "1",
}


def smoke(seconds: float) -> dict[str, str]:
    """Worker settings for the `smoke` entry point: a tracked child that sleeps `seconds`."""
    return {
        "ML_TRAINING_ENTRY_POINT": "smoke",
        "TBML_SMOKE_SECONDS": str(seconds),
        "TBML_SMOKE_TRACK": "1",
    }


@dataclass
class Cluster:
    """The running deployment: its settings, two API replicas and the current worker(s)."""

    processes: Processes
    root: Path
    env: dict[str, str]
    database_url: str
    server: MlflowServer
    replicas: list[Started]
    urls: list[str]
    workers: list[Started] = field(default_factory=list)
    worker_config: dict[str, str] | None = None
    _count: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # --- HTTP ----------------------------------------------------------------------------------

    def get(self, replica: int, path: str) -> httpx.Response:
        return httpx.get(self.urls[replica] + path, timeout=60)

    def post(self, replica: int, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return httpx.post(self.urls[replica] + path, json=body or {}, timeout=60)

    def job(self, job_id: str, *, replica: int = 0) -> dict[str, Any]:
        answer = self.get(replica, f"/api/training/job/{job_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait_job(self, job_id: str, status: str, *, timeout: float = 240) -> dict[str, Any]:
        """Wait for a job's status; fail at once if it ends otherwise."""
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.job(job_id))
            if seen["status"] in TERMINAL and seen["status"] != status:
                raise AssertionError(f"job {job_id} ended {seen['status']}: {seen.get('error')}")
            return bool(seen["status"] == status)

        wait_for(
            reached,
            timeout=timeout,
            what=f"job {job_id} {status}",
            watch=[*self.replicas, *self.workers],
        )
        return seen

    def clear_cooldowns(self) -> None:
        assert self.post(0, "/api/training/clear-cooldowns").status_code == 200

    # --- workers -------------------------------------------------------------------------------

    def use_workers(self, *, count: int, config: dict[str, str]) -> list[Started]:
        """`count` workers on `config` (the first holds the lease); reuses matching ones."""
        live = [w for w in self.workers if w.alive()]
        if config == self.worker_config and len(live) == count == len(self.workers):
            return live
        for worker in self.workers:
            self.processes.stop(worker)
        self.workers = []
        self.worker_config = config
        first = self._start_worker(config)
        wait_for(
            lambda: self.lease_holder_pid() == first.pid,
            timeout=120,
            what="the new worker to hold the dispatch lease",
            watch=[first],
        )
        for _ in range(count - 1):
            extra = self._start_worker(config)
            wait_for(
                lambda w=extra: "on standby" in w.log.read_text(errors="replace"),
                timeout=120,
                what="the second worker to stand by",
                watch=[extra],
            )
        return list(self.workers)

    def _start_worker(self, config: dict[str, str]) -> Started:
        number = next(self._count)
        env = {**self.env, **config, "ML_DATA_DIR": str(self.root / f"worker-{number}")}
        worker = self.processes.start(f"worker-{number}", [str(BIN / "tbml"), "worker"], env=env)
        self.workers.append(worker)
        return worker

    def lease_holder_pid(self) -> int | None:
        """The pid in the dispatch lease holder's id (`host:pid:random`), if held."""
        state = lease.current(self.database_url)
        if state.holder is None or state.expires_at < time.time() * 1000:
            return None
        return int(state.holder.split(":")[1])


@pytest.fixture(scope="module")
def cluster(
    postgres: Postgres,
    processes: Processes,
    mlflow_server: MlflowServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """Two API replicas without schedulers on a fresh PostgreSQL service database."""
    root = tmp_path_factory.mktemp("cluster")
    database_url = postgres.create("tbml_service")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "ML_DATABASE_URL": database_url,
        "ML_EXPERIMENT_NAME": "scaleout",
        "ML_MODEL_REFRESH_INTERVAL": str(int(REFRESH_S * 1000)),
        "ML_QUEUE_PROCESSING_INTERVAL": "300",
        "ML_SCHEDULER_LEASE": "3000",
        "ML_TRAINING_COOLDOWN": str(COOLDOWN_MS),
        "ML_TRAINING_RETRY_BACKOFF": "500",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    ports = [free_port(), free_port()]
    # Both replicas start at once on the empty database: their migrations race (and must not
    # fail), as they do when a deployment starts.
    replicas = [
        processes.start(
            f"api-{index}",
            [str(BIN / "tbml"), "serve", "--no-scheduler", "--port", str(port)],
            env={**env, "ML_DATA_DIR": str(root / f"api-{index}")},
        )
        for index, port in enumerate(ports)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    for url in urls:
        wait_for(
            lambda u=url: answers(f"{u}/api/health"),
            timeout=180,
            what=f"API replica {url}",
            watch=replicas,
        )
    deployment = Cluster(processes, root, env, database_url, mlflow_server, replicas, urls)
    yield deployment
    for started in [*deployment.workers, *replicas]:
        processes.stop(started)


def _client(server: MlflowServer) -> Any:
    from mlflow import MlflowClient  # imported here: seconds, and only these tests need it

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def _send_at_once(
    cluster: Cluster, requests: list[tuple[int, str]], body: dict[str, Any]
) -> list[tuple[int, str, httpx.Response]]:
    """POST /api/train/{pair} to the given replicas, all released at the same instant."""
    barrier = threading.Barrier(len(requests))
    results: list[tuple[int, str, httpx.Response]] = []
    errors: list[BaseException] = []

    def send(replica: int, pair: str) -> None:
        barrier.wait()
        try:
            results.append((replica, pair, cluster.post(replica, f"/api/train/{pair}", body)))
        except BaseException as error:  # collected and raised below
            errors.append(error)

    threads = [threading.Thread(target=send, args=request) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_training_requests_to_both_replicas_run_one_at_a_time(cluster: Cluster) -> None:
    first, second = cluster.use_workers(count=2, config=smoke(2.0))
    cluster.clear_cooldowns()
    pairs = ("BTC", "ETH", "XMR")

    answers = _send_at_once(cluster, [(r, p) for p in pairs for r in (0, 1)], {"epochs": 1})

    jobs: dict[str, str] = {}
    for pair in pairs:
        mine = {a.status_code: a.json() for _, p, a in answers if p == pair}
        assert sorted(mine) == [202, 409], mine  # one replica queued it, the other refused
        jobs[pair] = mine[202]["jobId"]
        assert mine[409]["existing"]["id"] == jobs[pair]
    active_counts: list[int] = []

    def all_succeeded() -> bool:
        for replica in (0, 1):
            queue = cluster.get(replica, "/api/training/queue").json()["queue"]
            active_counts.append(queue["active"]["count"])
        states = [cluster.job(job_id)["status"] for job_id in jobs.values()]
        failed = [s for s in states if s in TERMINAL - {"succeeded"}]
        assert not failed, states
        return all(s == "succeeded" for s in states)

    wait_for(all_succeeded, timeout=360, what="the three trainings", watch=cluster.workers)

    assert max(active_counts) == 1  # both replicas saw a training, never two
    views = sorted((cluster.job(j, replica=1) for j in jobs.values()), key=lambda v: v["startedAt"])
    for earlier, later in itertools.pairwise(views):
        assert later["startedAt"] >= earlier["finishedAt"]
    with read_session(cluster.database_url) as session:
        dispatchers = set(
            session.scalars(
                select(TrainingAttempt.worker_id).where(TrainingAttempt.job_id.in_(jobs.values()))
            )
        )
    assert [d.split(":")[1] for d in dispatchers] == [str(first.pid)]
    assert second.alive()  # the worker started by mistake stood by and never dispatched
    client = _client(cluster.server)
    for view in views:
        run = client.get_run(view["runId"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["tbml.job_id"] == view["id"]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")


def test_a_cooldown_started_by_the_worker_holds_on_every_replica(cluster: Cluster) -> None:
    cluster.use_workers(count=2, config=smoke(2.0))
    cluster.clear_cooldowns()
    trained = cluster.post(0, "/api/train/RVN", {"epochs": 1}).json()["jobId"]
    cluster.wait_job(trained, "succeeded")

    cooldowns = cluster.get(1, "/api/training/queue").json()["queue"]["cooldowns"]
    (rvn,) = [c for c in cooldowns if (c["pair"], c["modelType"]) == ("RVN", "lstm")]
    assert rvn["cooldownRemainingMinutes"] >= 9
    again = cluster.post(1, "/api/train/RVN", {"epochs": 1})
    assert again.status_code == 202, again.text
    verdict = again.json()["canTrain"]
    assert (verdict["allowed"], verdict["reason"]) == (False, "Cooldown active")
    assert verdict["cooldownRemainingMinutes"] >= 9
    waiting = again.json()["jobId"]

    # A job queued later for a pair without a cooldown runs while RVN's keeps waiting.
    later = cluster.post(0, "/api/train/ETH", {"epochs": 1}).json()["jobId"]
    cluster.wait_job(later, "succeeded")
    held = cluster.job(waiting, replica=0)
    assert (held["status"], held["attempts"]) == ("queued", 0)

    cleared = cluster.post(0, "/api/training/clear-cooldowns", {"pair": "RVN", "modelType": "lstm"})
    assert cleared.json()["cleared"] == [{"pair": "RVN", "modelType": "lstm"}]
    ran = cluster.wait_job(waiting, "succeeded")
    assert ran["startedAt"] >= cleared.json()["timestamp"]


def _served_version(cluster: Cluster, replica: int) -> str | None:
    answer = cluster.get(replica, "/api/predictions/BTC")
    if answer.status_code != 200:
        return None
    body = answer.json()
    return None if body.get("fallback") else body.get("modelVersion")


def _time_to_serve(cluster: Cluster, version: str, since: float) -> list[float]:
    """Seconds from `since` until each replica answered from `version`."""
    seen: dict[int, float] = {}

    def both() -> bool:
        for replica in (0, 1):
            if replica not in seen and _served_version(cluster, replica) == version:
                seen[replica] = time.monotonic() - since
        return len(seen) == 2

    wait_for(
        both,
        timeout=120,
        what=f"both replicas serving {version}",
        watch=cluster.replicas,
        interval=0.1,
    )
    return [seen[0], seen[1]]


def test_a_new_production_version_is_served_by_both_replicas_within_one_refresh(
    cluster: Cluster,
) -> None:
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "train"]
    for name, value in {"pair": "BTC", **TINY_TRAINING, "promote": "false"}.items():
        command += ["-P", f"{name}={value}"]
    command += ["--env-manager", "local", "--experiment-name", "scaleout-training"]
    env = {**cluster.env, "ML_DATA_DIR": str(cluster.root / "trainer")}
    trained = subprocess.run(
        command, cwd=cluster.root, env=env, capture_output=True, text=True, timeout=600
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = _client(cluster.server)
    (first,) = client.search_model_versions("name = 'BTC-lstm'")
    run = client.get_run(first.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
    # The registered pyfunc model's bundle files, uploaded through the server.
    assert list(cluster.server.artifacts.rglob("models/m-*/artifacts/artifacts/model.onnx"))
    assert [_served_version(cluster, r) for r in (0, 1)] == [None, None]

    timings = {}
    client.set_registered_model_alias("BTC-lstm", "production", first.version)
    timings[first.version] = _time_to_serve(cluster, first.version, time.monotonic())
    # A second version of the same bundle, promoted by moving the alias (as in the MLflow UI).
    # The source is the run's logged model, `models:/<model id>`; the server wants that id.
    model_id = first.source.removeprefix("models:/")
    second = client.create_model_version(
        "BTC-lstm", first.source, run_id=first.run_id, model_id=model_id
    )
    client.set_registered_model_alias("BTC-lstm", "production", second.version)
    timings[second.version] = _time_to_serve(cluster, second.version, time.monotonic())

    print(f"seconds from alias move to serving, per replica: {timings}")  # shown with -rP
    for version, seconds in timings.items():
        assert max(seconds) <= REFRESH_S + LOAD_ALLOWANCE_S, (version, seconds)
    for replica in (0, 1):  # each replica downloaded its own copy into its own cache
        cache = cluster.root / f"api-{replica}" / "model-cache" / "BTC-lstm" / second.version
        assert list(cache.rglob("model.onnx"))
        health = cluster.get(replica, "/api/health").json()
        assert health["models"]["BTC"]["lstm"]["version"] == second.version
    bodies = [cluster.get(r, "/api/predictions/BTC").json() for r in (0, 1)]
    assert bodies[0]["prediction"] == bodies[1]["prediction"]
    assert bodies[0]["candleTime"] == bodies[1]["candleTime"]


def _training_tree(cluster: Cluster, job_id: str) -> list[psutil.Process]:
    """The job's child process tree, once its smoke process runs."""
    found = wait_for(
        lambda: smoke_tree(cluster.database_url, job_id),
        timeout=180,
        what=f"{job_id}'s smoke process",
        watch=cluster.workers,
    )
    assert isinstance(found, list)
    return found


def test_a_worker_killed_mid_training_is_recovered_by_a_restarted_worker(
    cluster: Cluster,
) -> None:
    (first,) = cluster.use_workers(count=1, config=smoke(600))
    cluster.clear_cooldowns()
    job_id = cluster.post(1, "/api/train/XMR", {"epochs": 1}).json()["jobId"]
    tree = _training_tree(cluster, job_id)
    run_id = cluster.job(job_id)["runId"]

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    # The child runs in a session of its own: it trains on, orphaned; both replicas see it.
    assert alive(tree) == [p.pid for p in tree]
    for replica in (0, 1):
        active = cluster.get(replica, "/api/training/queue").json()["queue"]["active"]
        assert [job["id"] for job in active["jobs"]] == [job_id]

    (second,) = cluster.use_workers(count=1, config=smoke(0.5))
    job = cluster.wait_job(job_id, "succeeded")

    assert alive(tree) == []  # killed by the successor, not left training beside it
    history = job["attemptHistory"]
    assert [a["outcome"] for a in history] == ["interrupted", "succeeded"]
    assert str(first.pid) in (history[0]["error"] or "")
    assert history[0]["runId"] == run_id
    client = _client(cluster.server)
    assert client.get_run(run_id).info.status == "FAILED"
    assert client.get_run(history[1]["runId"]).info.status == "FINISHED"
    with read_session(cluster.database_url) as session:
        worker = session.scalar(
            select(TrainingAttempt.worker_id).where(
                TrainingAttempt.job_id == job_id, TrainingAttempt.number == 2
            )
        )
    assert worker is not None
    assert worker.split(":")[1] == str(second.pid)
