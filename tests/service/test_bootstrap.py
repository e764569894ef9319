"""`tbml up`: which models need a bootstrap training, the training itself, the whole command.

The trainings are real `mlflow run . -e train` children into a tracking store in tmp_path, on a
tiny model (sequence length 12, one layer of 4 units) and the newest few hundred BTC candles.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.queue.runtime import TrainingScheduler
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.tracking import PRODUCTION_ALIAS, production_version
from service.bootstrap import Progress, bootstrap_params, missing_production_models, train_slot
from tests.conftest import BUNDLED, Postgres, write_newer_candles

TINY = {
    "sequence_length": 12,
    "lstm_units": 4,
    "lstm_layers": 1,
    "bootstrap_epochs": 2,
    "bootstrap_max_rows": 600,
}


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "bundled_data_dir": BUNDLED,
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "artifact_root": tmp_path / "mlruns",
        "database_url": f"sqlite:///{tmp_path / 'service.db'}",
        "enabled_models": ["lstm"],
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def _register(client: MlflowClient, name: str, *, production: bool, artifacts: Path) -> None:
    """A registered version (no model files: only the registry's bookkeeping matters here)."""
    experiment = client.get_experiment_by_name("registry-test") or client.get_experiment(
        client.create_experiment("registry-test", artifact_location=artifacts.as_uri())
    )
    run = client.create_run(experiment.experiment_id)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    if production:
        client.set_registered_model_alias(name, PRODUCTION_ALIAS, version.version)


def test_only_models_without_a_production_version_need_training(tmp_path: Path) -> None:
    settings = _settings(tmp_path, pairs=["BTC", "ETH", "XMR"], enabled_models=["lstm", "gru"])
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    _register(client, "BTC-lstm", production=True, artifacts=tmp_path / "mlruns")
    _register(client, "ETH-gru", production=True, artifacts=tmp_path / "mlruns")
    # Registered but never promoted: still nothing to serve.
    _register(client, "ETH-lstm", production=False, artifacts=tmp_path / "mlruns")

    missing = missing_production_models(settings, client=client)

    # The first enabled type of every pair first: what a request without `?model=` serves.
    assert missing == [("ETH", "lstm"), ("XMR", "lstm"), ("BTC", "gru"), ("XMR", "gru")]


def test_a_tabular_bootstrap_learns_every_candle_and_a_network_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ML_ENABLED_MODELS", raising=False)
    settings = _settings(tmp_path, **TINY)

    assert bootstrap_params(settings, "lstm") == {"epochs": 2, "max_rows": 600}
    # A tabular verdict walks forward over the full history: a budget cut would blind it.
    assert bootstrap_params(settings, "lightgbm") == {}
    assert Settings(_env_file=None).enabled_models == ["lightgbm", "lstm"]


def test_nothing_needs_training_once_every_slot_has_production(tmp_path: Path) -> None:
    settings = _settings(tmp_path, pairs=["BTC", "ETH"])
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    for name in ("BTC-lstm", "ETH-lstm"):
        _register(client, name, production=True, artifacts=tmp_path / "mlruns")

    assert missing_production_models(settings, client=client) == []


@pytest.mark.slow
def test_bootstrap_training_is_an_mlflow_project_run_that_reaches_production(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, pairs=["BTC"], **TINY)
    newest = write_newer_candles(settings.data_dir, hours=24)
    seen: list[Progress] = []

    result = train_slot(
        settings, pair="BTC", model_type="lstm", on_progress=seen.append, poll_s=0.2
    )

    assert result.ok, result.error
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    assert production_version(client, name="BTC-lstm") == result.version == result.production
    run = client.get_run(str(result.run_id))
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    # A queue job like any other, that says why it exists, on the ingested candles too.
    assert run.data.tags["tbml.requested_by"] == "bootstrap"
    assert run.data.tags["tbml.job_id"] == result.job_id
    assert run.data.tags["data_range"].endswith(newest)
    # The bootstrap budget and the settings' model are the run's parameters.
    assert run.data.params["epochs"] == "2"
    assert run.data.params["max_rows"] == "600"
    assert run.data.params["sequence_length"] == "12"
    assert run.data.params["units"] == "4"
    assert result.epochs_seen == [1, 2]
    assert result.beats_baseline is not None  # the gate's verdict, shown as "unproven" if False
    assert seen[-1].stage == "finishing"
    assert seen[-1].epoch == 2
    assert all(set(epoch) >= {"loss", "val_loss"} for epoch in seen[-1].history)
    assert result.log_path is not None
    assert result.log_path.is_file()
    assert missing_production_models(settings, client=client) == []


@pytest.mark.slow
def test_failed_bootstrap_training_is_reported_with_its_log(tmp_path: Path) -> None:
    # 40 candles cannot fill one window after the features' warm-up: the entry point refuses.
    settings = _settings(tmp_path, pairs=["BTC"], **{**TINY, "bootstrap_max_rows": 40})

    result = train_slot(settings, pair="BTC", model_type="lstm", poll_s=0.2)

    assert not result.ok
    assert result.returncode != 0
    assert "error:" in result.error
    assert result.log_path is not None
    assert result.log_path.is_file()
    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    assert client.get_run(str(result.run_id)).info.status == "FAILED"
    assert missing_production_models(settings, client=client) == [("BTC", "lstm")]


@pytest.mark.slow
def test_bootstrap_jobs_wait_their_turn_behind_a_running_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "3")
    settings = _settings(
        tmp_path,
        pairs=["BTC", "ETH"],
        training_entry_point="smoke",
        training_cooldown_ms=0,
        queue_processing_interval_ms=200,
        scheduler_lease_ms=2_000,
    )
    # The MLflow store's tables first: two processes creating a new SQLite store at once race
    # in MLflow's own migrations.
    MlflowClient(settings.tracking_uri).search_experiments()
    worker = TrainingScheduler(settings).start()
    try:
        first = worker.queue.enqueue(pair="ETH", requested_by="cli")
        deadline = time.monotonic() + 60
        while worker.queue.get_job(job_id=first.job_id).status != "training":
            assert time.monotonic() < deadline, "the worker never started its job"
            time.sleep(0.1)
        seen: list[Progress] = []

        result = train_slot(
            settings, pair="BTC", model_type="lstm", on_progress=seen.append, poll_s=0.1
        )

        before = worker.queue.get_job(job_id=first.job_id)
        after = worker.queue.get_job(job_id=str(result.job_id))
    finally:
        worker.shutdown()
    assert after.requested_by == "bootstrap"
    assert after.status == "succeeded"
    # It waited, said behind what, and started only once the worker's training had ended.
    assert any(p.stage == "queued" and p.waiting_for == first.job_id for p in seen)
    assert before.finished_at is not None
    assert after.started_at is not None
    assert after.started_at >= before.finished_at


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Up:
    """`tbml up` as a child process, its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "tbml"), "up", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never printed:\n" + "\n".join(self.lines[-40:]))
            time.sleep(0.1)

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; the exit status (uvicorn re-raises SIGINT: 130)."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            self.reader.join(timeout=10)
            assert self.process.stdout is not None
            self.process.stdout.close()


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return dict(json.loads(response.read()))


@pytest.mark.slow
def test_up_trains_what_is_missing_then_serves_and_trains_nothing_the_second_time(
    tmp_path: Path,
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "ML_PAIRS": "BTC",
        "ML_DATA_DIR": str(tmp_path / "data"),
        "ML_BUNDLED_DATA_DIR": str(BUNDLED),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ML_ARTIFACT_ROOT": str(tmp_path / "mlruns"),
        "ML_DATABASE_URL": f"sqlite:///{tmp_path / 'service.db'}",
        "ML_SEQUENCE_LENGTH": "12",
        "ML_LSTM_UNITS": "4",
        "ML_LSTM_LAYERS": "1",
        "ML_BOOTSTRAP_EPOCHS": "1",
        "ML_BOOTSTRAP_MAX_ROWS": "600",
        "ML_ENABLED_MODELS": "lstm",
    }
    first = _Up(env)
    try:
        first.wait_for("is serving on", timeout=240)
        body = _get(f"http://127.0.0.1:{port}/api/predictions/BTC")
    finally:
        first.stop()
    assert body["fallback"] is False
    assert body["modelVersion"] == "1"
    assert any("[1/1] BTC-lstm  epoch 1/1" in line for line in first.lines)
    assert any("These are bootstrap models" in line for line in first.lines)

    second = _Up(env)
    try:
        second.wait_for("is serving on", timeout=120)
        again = _get(f"http://127.0.0.1:{port}/api/predictions/BTC")
    finally:
        second.stop()
    assert any("nothing to train" in line for line in second.lines)
    assert not any("[1/1]" in line for line in second.lines)
    assert again["modelVersion"] == "1"


@pytest.mark.postgres
def test_up_prints_no_database_password(tmp_path: Path, postgres: Postgres) -> None:
    from sqlalchemy.engine import make_url

    # The local server trusts every connection, so any password gets in: one to look for.
    database_url = (
        make_url(postgres.create("tbml_up"))
        .set(password="hunter22")
        .render_as_string(hide_password=False)
    )
    port = _free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "ML_PAIRS": "BTC",
        "ML_DATA_DIR": str(tmp_path / "data"),
        "ML_BUNDLED_DATA_DIR": str(BUNDLED),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ML_ARTIFACT_ROOT": str(tmp_path / "mlruns"),
        "ML_DATABASE_URL": database_url,
    }
    up = _Up(env, "--no-train")
    try:
        up.wait_for("is serving on", timeout=120)
    finally:
        up.stop()
    assert any("service database at the newest schema" in line for line in up.lines)
    assert not any("hunter22" in line for line in up.lines)
