"""The real `mlflow run . -e train ... --env-manager local`, in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.settings import PROJECT_ROOT


@pytest.mark.slow
def test_mlflow_run_trains_registers_and_promotes(tmp_path: Path) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "ML_ARTIFACT_ROOT": str(tmp_path / "mlruns"),
        "ML_DATA_DIR": str(tmp_path / "data"),
        # The entry point's command runs `python`: the one of this environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    params = {
        "pair": "BTC",
        "epochs": "1",
        "sequence_length": "12",
        "units": "4",
        "layers": "1",
        "max_rows": "400",
    }
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "train"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    command += ["--env-manager", "local", "--experiment-name", "mlflow-run-test"]

    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mlflow-run-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["max_rows"] == "400"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.tags["tbml.promotion"] == "promoted"
    assert run.data.tags["tbml.registered_model"] == "BTC-lstm"
    assert run.data.tags["tbml.registered_version"] == "1"
    assert "test_log_loss" in run.data.metrics
    version = client.get_model_version_by_alias("BTC-lstm", "production")
    assert version.run_id == run.info.run_id
