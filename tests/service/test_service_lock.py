"""The service's own lock (the service image's requirements) serves with MLflow's client only.

`requirements/service.lock` holds `mlflow-skinny`, not the full `mlflow` (no MLflow server, UI,
Flask or model-serving stack); this test installs exactly that lock in a fresh virtual
environment and has `tbml serve` answer a real prediction from a real registry there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.settings import PROJECT_ROOT
from tests.service.conftest import Trained, make_settings, serve_in_child

LOCK = PROJECT_ROOT / "requirements" / "service.lock"
UV = Path(sys.executable).parent / "uv"


def _lock_names() -> set[str]:
    return {
        line.split("==")[0].strip().lower()
        for line in LOCK.read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    }


def test_the_service_lock_has_the_mlflow_client_and_not_the_server() -> None:
    names = _lock_names()
    assert "mlflow-skinny" in names
    assert not names & {"mlflow", "flask", "gunicorn", "tensorflow", "tensorflow-cpu", "keras"}


@pytest.mark.slow
def test_a_venv_of_the_service_lock_serves_a_real_prediction(
    tmp_path: Path, trained: Trained
) -> None:
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    for command in (
        [str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)],
        [str(UV), "pip", "install", "--quiet", "--python", str(python), "-r", str(LOCK)],
        [str(UV), "pip", "install", "--quiet", "--python", str(python), "--no-deps", "-e", "."],
    ):
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
    child = serve_in_child(make_settings(tmp_path, trained), python=str(python))

    assert child.returncode == 0, child.stderr[-3000:]
    answer = json.loads(child.stdout.strip().splitlines()[-1])["answer"]
    assert answer["fallback"] is False
    assert answer["modelVersion"] == "1"
