"""The training child: `mlflow run` of the project's entry point, in its own process group.

`start_new_session=True` makes the child the leader of a new session and process group, so
one `killpg` reaches `mlflow run`, the shell it starts and the training under it; descendants
that left the group are found through psutil and killed too. The pid is stored with the
process's start time, so a successor scheduler never kills a recycled pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipelines.queue.childenv import child_environment
from pipelines.settings import PROJECT_ROOT, Settings

logger = logging.getLogger(__name__)

ENV_JOB_ID = "TBML_JOB_ID"
ENV_ATTEMPT = "TBML_JOB_ATTEMPT"
# psutil's start times are floats from /proc; equal processes agree far closer than this.
_START_TIME_TOLERANCE_S = 0.05
_KILL_WAIT_S = 10.0


@dataclass
class Child:
    """A started training child."""

    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group id."""
        return self.process.pid


def log_dir(settings: Settings) -> Path:
    """Where each attempt's stdout and stderr go."""
    return settings.data_dir / "training-logs"


def build_command(
    settings: Settings,
    *,
    experiment_id: str,
    run_id: str,
    pair: str,
    model_type: str,
    params: Mapping[str, object],
) -> list[str]:
    """`python -m mlflow run <project> -e <entry point> --env-manager local --run-id ... -P ...`."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(PROJECT_ROOT),
        "-e",
        settings.training_entry_point,
        "--env-manager",
        "local",
        "--experiment-id",
        experiment_id,
        "--run-id",
        run_id,
        "-P",
        f"pair={pair}",
        "-P",
        f"model_type={model_type}",
    ]
    for name, value in params.items():
        command += ["-P", f"{name}={value}"]
    return command


def launch(
    settings: Settings, *, command: list[str], job_id: str, attempt: int, log_path: Path
) -> Child:
    """Start the child in a new session, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = child_environment(settings, extra={ENV_JOB_ID: job_id, ENV_ATTEMPT: str(attempt)})
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started_at = psutil.Process(process.pid).create_time()
    except psutil.NoSuchProcess:
        started_at = 0.0
    logger.info("job %s attempt %d: started pid %d, log %s", job_id, attempt, process.pid, log_path)
    return Child(process=process, log_path=log_path, started_at=started_at)


def _same_process(pid: int, started_at: float | None) -> psutil.Process | None:
    try:
        process = psutil.Process(pid)
        if started_at and abs(process.create_time() - started_at) > _START_TIME_TOLERANCE_S:
            return None  # the pid was recycled: not ours to kill
        return process
    except psutil.NoSuchProcess:
        return None


def _processes_of_job(job_id: str) -> list[psutil.Process]:
    """Processes whose environment names this job (children started before their pid was saved)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and process.environ().get(ENV_JOB_ID) == job_id:
                found.append(process)
    return found


def kill_tree(
    pid: int | None, *, started_at: float | None, job_id: str | None = None
) -> list[psutil.Process]:
    """SIGKILL a child's process group and every descendant; return the processes signalled.

    Args:
        pid: The child's pid (its process group id), if known.
        started_at: Its start time as stored; a pid with another start time is left alone.
        job_id: Also kill processes whose environment carries this job id (for recovery).
    """
    targets: dict[int, psutil.Process] = {}
    leader = _same_process(pid, started_at) if pid else None
    if leader is not None:
        targets[leader.pid] = leader
        with contextlib.suppress(psutil.Error):
            for descendant in leader.children(recursive=True):
                targets[descendant.pid] = descendant
    if job_id is not None:
        for process in _processes_of_job(job_id):
            targets[process.pid] = process
    if leader is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader.pid, signal.SIGKILL)
    for process in targets.values():
        with contextlib.suppress(psutil.Error):
            process.kill()
    return list(targets.values())


def wait_gone(processes: list[psutil.Process], *, timeout: float = _KILL_WAIT_S) -> bool:
    """Wait until none of `processes` runs; False if some outlive `timeout`.

    A zombie counts as gone: it runs nothing any more, and one whose parent died may wait long
    for a reaper. A child of this very process is only watched, never reaped here:
    `psutil.wait_procs` would reap it, and its `Popen` would then read exit status 0 instead of
    how it really ended.
    """
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while True:
        mine = [process for process in alive if _is_child(process)]
        others = [process for process in alive if process not in mine]
        _, still = psutil.wait_procs(others, timeout=0.05) if others else ([], [])
        alive = [process for process in [*still, *mine] if not _is_zombie(process)]
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        if not others:
            time.sleep(0.02)


def _is_child(process: psutil.Process) -> bool:
    try:
        return process.ppid() == os.getpid()
    except psutil.NoSuchProcess:
        return False


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_child(child: Child, *, job_id: str) -> list[int]:
    """Kill a running child's whole tree, reap it, wait for the rest; return the pids."""
    processes = kill_tree(child.pid, started_at=child.started_at, job_id=job_id)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(timeout=_KILL_WAIT_S)
    others = [process for process in processes if process.pid != child.pid]
    if not wait_gone(others):
        logger.error("job %s: processes survived SIGKILL: %s", job_id, [p.pid for p in others])
    return sorted(process.pid for process in processes)


def log_tail(path: Path | None, *, lines: int = 15, limit: int = 2_000) -> str:
    """The last lines of a child's log, for the job's error message."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 16_384))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])[-limit:]
