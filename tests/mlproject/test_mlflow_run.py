"""The real `mlflow run . -e train ... --env-manager local`, in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.candles.validate import read_candle_file
from pipelines.settings import PROJECT_ROOT
from tests.conftest import BUNDLED


def _mlflow_run(tmp_path: Path, params: dict[str, str], **env: str) -> MlflowClient:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "ML_ARTIFACT_ROOT": str(tmp_path / "mlruns"),
        "ML_DATA_DIR": str(tmp_path / "data"),
        # The entry point's command runs `python`: the one of this environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **env,
    }
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "train"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    command += ["--env-manager", "local", "--experiment-name", "mlflow-run-test"]

    result = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stderr[-3000:]
    return MlflowClient(tracking_uri)


def _only_run(client: MlflowClient):  # type: ignore[no-untyped-def]
    experiment = client.get_experiment_by_name("mlflow-run-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    return run


@pytest.mark.slow
def test_mlflow_run_trains_registers_and_promotes(tmp_path: Path) -> None:
    params = {
        "pair": "BTC",
        "epochs": "1",
        "sequence_length": "12",
        "units": "4",
        "layers": "1",
        "max_rows": "400",
    }
    client = _mlflow_run(tmp_path, params)

    run = _only_run(client)
    assert run.info.status == "FINISHED"
    assert run.data.params["max_rows"] == "400"
    assert run.data.params["units"] == "4"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.tags["tbml.promotion"] == "promoted"
    assert run.data.tags["tbml.registered_model"] == "BTC-lstm"
    assert run.data.tags["tbml.registered_version"] == "1"
    assert "test_log_loss" in run.data.metrics
    version = client.get_model_version_by_alias("BTC-lstm", "production")
    assert version.run_id == run.info.run_id


@pytest.mark.slow
def test_mlflow_run_trains_on_ingested_candles_with_the_settings(tmp_path: Path) -> None:
    # Daily candles that exist only under ML_DATA_DIR (no bundled file has them), and the
    # training parameters left to their settings: both must reach the training.
    hourly = read_candle_file(BUNDLED / "BTC-USDT_1h.csv.gz")
    daily = (
        hourly.resample("1D")
        .agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
        .dropna()
    )
    path = tmp_path / "data" / "candles" / "testex" / "BTC-USD_1d.csv"
    path.parent.mkdir(parents=True)
    frame = daily.reset_index()
    frame["timestamp"] = frame["timestamp"].map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    frame.to_csv(path, index=False)

    client = _mlflow_run(
        tmp_path,
        {"pair": "BTC"},
        ML_TIMEFRAME="1d",
        ML_QUOTE_CURRENCY="USD",
        ML_EXCHANGE="testex",
        ML_LSTM_UNITS="7",
        ML_LSTM_LAYERS="1",
        ML_SEQUENCE_LENGTH="12",
        ML_EPOCHS="1",
    )

    run = _only_run(client)
    assert run.info.status == "FINISHED"
    assert run.data.params["units"] == "7"
    assert run.data.params["epochs"] == "1"
    assert run.data.params["data_dir"] == str(tmp_path / "data")
    assert run.data.tags["data_range"].endswith(daily.index[-1].isoformat())
