"""An active training's progress (epoch n of N, latest losses) comes from its MLflow run's
per-epoch metrics: a real SQLite tracking store, the reader the service uses."""

from __future__ import annotations

from types import SimpleNamespace

from mlflow import MlflowClient

from pipelines.settings import Settings
from service.registry_reader import MlflowReader
from service.routes.training import training_progress


def _state(settings: Settings) -> SimpleNamespace:
    return SimpleNamespace(models=SimpleNamespace(reader=MlflowReader(settings.tracking_uri)))


def _run(settings: Settings) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.create_experiment("progress", artifact_location=str(settings.artifact_root))
    return client, client.create_run(experiment).info.run_id


def test_progress_is_the_latest_epoch_of_the_held_out_fit_then_of_the_refit(
    settings: Settings,
) -> None:
    client, run_id = _run(settings)
    state, job = _state(settings), {"id": "BTC_lstm_1", "runId": run_id, "epochs": 20}
    assert training_progress(state, job) is None  # started, no epoch finished yet

    for step, (loss, val) in enumerate([(0.70, 0.71), (0.69, 0.705), (0.68, 0.70)]):
        client.log_metric(run_id, "loss", loss, step=step)
        client.log_metric(run_id, "val_loss", val, step=step)
    assert training_progress(state, job) == {
        "phase": "held_out",
        "epoch": 3,
        "epochs": 20,
        "loss": 0.68,
        "valLoss": 0.70,
    }

    client.log_metric(run_id, "best_epoch", 1.0)  # the held-out verdict: weights of epoch 2
    client.log_metric(run_id, "refit_loss", 0.695, step=0)
    assert training_progress(state, job) == {
        "phase": "refit",
        "epoch": 1,
        "epochs": 2,
        "loss": 0.695,
        "valLoss": None,
    }


def test_a_run_that_cannot_be_read_gives_no_progress_rather_than_an_error(
    settings: Settings,
) -> None:
    job = {"id": "BTC_lstm_1", "runId": "0" * 32, "epochs": 5}
    assert training_progress(_state(settings), job) is None
