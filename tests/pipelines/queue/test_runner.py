"""The training child's process handling: the command, killing a whole tree, log tails."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from pipelines.queue import runner
from pipelines.settings import PROJECT_ROOT
from tests.pipelines.queue.conftest import alive, make_settings, wait_until

# A child that starts two grandchildren in its process group, like `mlflow run` -> bash -> python.
TREE = """
import subprocess, sys, time
sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]) for _ in "ab"]
time.sleep(300)
"""


def _spawn_tree() -> tuple[subprocess.Popen[bytes], list[psutil.Process]]:
    process = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    leader = psutil.Process(process.pid)
    wait_until(lambda: len(leader.children()) == 2, timeout=30)
    return process, [leader, *leader.children(recursive=True)]


def test_the_command_is_mlflow_run_of_the_project_entry_point(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    command = runner.build_command(
        settings,
        experiment_id="3",
        run_id="abc",
        pair="BTC",
        model_type="lstm",
        params={"epochs": 5, "dropout": 0.3},
    )
    assert command[:5] == [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT)]
    joined = " ".join(command)
    assert "-e smoke --env-manager local --experiment-id 3 --run-id abc" in joined
    assert joined.endswith("-P pair=BTC -P model_type=lstm -P epochs=5 -P dropout=0.3")


def test_kill_tree_kills_the_child_and_its_descendants() -> None:
    process, tree = _spawn_tree()
    started = tree[0].create_time()
    killed = runner.kill_tree(process.pid, started_at=started)
    process.wait(timeout=10)
    assert sorted(p.pid for p in killed) == sorted(p.pid for p in tree)
    assert runner.wait_gone(tree[1:], timeout=10)
    assert process.returncode == -9


def test_kill_tree_leaves_a_recycled_pid_alone() -> None:
    process, tree = _spawn_tree()
    try:
        # Same pid, another start time: not the process the job row recorded.
        assert runner.kill_tree(process.pid, started_at=tree[0].create_time() - 100) == []
        time.sleep(0.2)
        assert alive(tree) == [p.pid for p in tree]
    finally:
        runner.kill_tree(process.pid, started_at=None)
        process.wait(timeout=10)


def test_kill_tree_finds_children_by_their_job_id(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    log = tmp_path / "job.log"
    child = runner.launch(
        settings,
        command=[sys.executable, "-c", "import time; time.sleep(300)"],
        job_id="ETH_lstm_7",
        attempt=1,
        log_path=log,
    )
    killed = runner.kill_tree(None, started_at=None, job_id="ETH_lstm_7")
    child.process.wait(timeout=10)
    assert [p.pid for p in killed] == [child.pid]


def test_log_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "attempt.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert runner.log_tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert runner.log_tail(tmp_path / "missing.log") == ""
