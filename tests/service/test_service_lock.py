"""The service's own lock (the service image's requirements) serves with MLflow's client only.

`requirements/service.lock` holds `mlflow-skinny`, not the full `mlflow` (no MLflow server, UI,
Flask or model-serving stack); this test installs exactly that lock in a fresh virtual
environment and has `tbml serve` answer a real prediction from a real registry there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.settings import PROJECT_ROOT
from tests.conftest import free_port
from tests.service.conftest import Trained, make_settings

LOCK = PROJECT_ROOT / "requirements" / "service.lock"
UV = Path(sys.executable).parent / "uv"

CHILD = """
import json, os, sys, threading, time, urllib.request
from tbml.cli import app

port = sys.argv[1]
args = ["serve", "--port", port, "--no-scheduler", "--log-level", "warning"]
threading.Thread(target=lambda: app(args, standalone_mode=False), daemon=True).start()
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(base + "/api/health", timeout=5) as response:
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
    time.sleep(0.2)
with urllib.request.urlopen(base + "/api/predictions/BTC", timeout=30) as response:
    answer = json.loads(response.read())
print(json.dumps({"answer": answer}), flush=True)
os._exit(0)
"""


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
    settings = make_settings(tmp_path, trained)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "MLFLOW_"))}
    env.update(
        {
            "ML_DATA_DIR": str(settings.data_dir),
            "ML_BUNDLED_DATA_DIR": str(settings.bundled_data_dir),
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
            "ML_ARTIFACT_ROOT": str(settings.artifact_root),
            "ML_DATABASE_URL": settings.database_url,
        }
    )

    child = subprocess.run(
        [str(python), "-c", CHILD, str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert child.returncode == 0, child.stderr[-3000:]
    answer = json.loads(child.stdout.strip().splitlines()[-1])["answer"]
    assert answer["fallback"] is False
    assert answer["modelVersion"] == "1"
