"""Scale-out fixtures: PostgreSQL databases, an `mlflow server` on PostgreSQL, real processes.

Everything talks over loopback to the PostgreSQL server at 127.0.0.1:5432 (ML_TEST_POSTGRES_URL
to change it): tests create databases of their own there and drop them afterwards, and are
skipped, saying why, where no server answers. Each process started here runs in a session of
its own with a marker in its environment; at teardown every process group is stopped, and any
process still carrying the marker (a training child, orphaned on purpose by a test) is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Postgres, free_port

BIN = Path(sys.executable).parent
MARK = "TBML_SCALEOUT_RUN"


@dataclass
class Started:
    """A process started by `Processes`, with its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Starts processes, each leading a session of its own; stops what is left at the end."""

    root: Path
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict[str, str]) -> Started:
        """Start `argv` with `env` (plus the marker), output to `<root>/<name>.log`."""
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=self.root,
                env={**env, MARK: self.mark},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Started(name, process, log)
        self.started.append(started)
        return started

    @staticmethod
    def stop(started: Started, *, timeout: float = 60.0) -> int | None:
        """SIGTERM the process group, SIGKILL it if it lingers; returns the exit status."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(started.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                return started.process.wait(timeout=wait)
        return started.process.poll()

    def marked(self) -> list[psutil.Process]:
        """Live processes carrying this run's marker (started here, or by what was)."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.pid != os.getpid() and process.environ().get(MARK) == self.mark:
                    found.append(process)
        return found

    def stop_all(self) -> None:
        for started in reversed(self.started):
            if started.alive():
                self.stop(started, timeout=30)
        leftovers = self.marked()
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(leftovers, timeout=10)


def wait_for(
    predicate: Callable[[], object],
    *,
    timeout: float,
    what: str,
    watch: list[Started] | None = None,
    interval: float = 0.2,
) -> object:
    """Poll until `predicate()` is truthy; fail naming `what` (and a dead process's log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for started in watch or []:
            if not started.alive():
                raise AssertionError(
                    f"{started.name} exited ({started.process.returncode}) while waiting for "
                    f"{what}:\n{started.tail()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s.name}\n{s.tail(15)}" for s in watch or [])
            raise AssertionError(f"not within {timeout} s: {what}\n{logs}")
        time.sleep(interval)


def answers(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """The session's process starter; everything it started is stopped at the end."""
    started = Processes(tmp_path_factory.mktemp("processes"))
    try:
        yield started
    finally:
        started.stop_all()


@dataclass(frozen=True)
class MlflowServer:
    """A running `mlflow server` on a PostgreSQL backend, serving artifacts from a directory."""

    url: str
    backend_url: str
    artifacts: Path
    started: Started


@pytest.fixture(scope="session")
def mlflow_server(
    postgres: Postgres, processes: Processes, tmp_path_factory: pytest.TempPathFactory
) -> MlflowServer:
    """`mlflow server --backend-store-uri postgresql+psycopg://... --serve-artifacts`.

    Clients upload and download artifacts through the server (`mlflow-artifacts:/`), as
    workers and API replicas on different machines must. MLflow's own job runner (GenAI jobs,
    several extra processes) is switched off: nothing here uses it.
    """
    backend = postgres.create("tbml_mlflow")
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    started = processes.start(
        "mlflow-server",
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    # Creating MLflow's schema on a new PostgreSQL database takes tens of seconds.
    wait_for(lambda: answers(f"{url}/health"), timeout=240, what="mlflow server", watch=[started])
    return MlflowServer(url=url, backend_url=backend, artifacts=artifacts, started=started)
