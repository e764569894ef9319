"""The refit: after its held-out verdict a training registers the model refitted on all candles.

Two tiny real trainings on the newest 400 BTC candles into one temporary tracking store: the
first with the refit (the default, `ML_REFIT`), registered as version 1; the second with
`ML_REFIT=false`, registered as version 2 without gating. The gate is then run between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlproject.config import TrainConfig
from mlproject.gate import apply_gate
from mlproject.metrics import classification_metrics
from mlproject.scoring import MODEL, WindowScore, score_bundle
from mlproject.train import TrainingOutcome, load_dataset, train
from mlproject.verdict import PREDICTIONS_ARTIFACT, TIMESTAMP
from pipelines.modelbundle import ModelBundle, download_bundle
from pipelines.settings import Settings
from tests.conftest import stores_under

pytestmark = pytest.mark.slow

NAME = "BTC-lstm"
SMALL: dict[str, Any] = {
    "pair": "BTC",
    "epochs": 3,
    "sequence_length": 12,
    "units": 8,
    "layers": 1,
    "max_rows": 400,
}


@dataclass(frozen=True)
class Trained:
    settings: Settings
    client: MlflowClient
    refit: TrainingOutcome  # version 1
    held_out: TrainingOutcome  # version 2, trained with ML_REFIT=false
    root: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("refit")
    settings = stores_under(root)
    assert settings.refit is True  # the default
    refit = train(TrainConfig(**SMALL), settings=settings)
    held_out = train(
        TrainConfig(**SMALL, promote=False), settings=settings.model_copy(update={"refit": False})
    )
    return Trained(settings, MlflowClient(settings.tracking_uri), refit, held_out, root)


def _bundle(trained: Trained, version: str) -> ModelBundle:
    return download_bundle(
        trained.client, name=NAME, version=version, dst=trained.root / f"bundle-{version}"
    )


def _held_out_predictions(trained: Trained, run_id: str) -> pd.DataFrame:
    path = trained.client.download_artifacts(
        run_id, PREDICTIONS_ARTIFACT, str(trained.root / f"verdict-{run_id}")
    )
    frame = pd.read_csv(path)
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    return frame


def _score_test_window(bundle: ModelBundle, candles: pd.DataFrame) -> WindowScore:
    window = bundle.metadata["test_window"]
    index = candles.index
    rows = index[(index >= pd.Timestamp(window["start"])) & (index <= pd.Timestamp(window["end"]))]
    return score_bundle(
        bundle, candles=candles, timestamps=pd.DatetimeIndex(rows), horizon=bundle.horizon
    )


def test_the_registered_refit_learnt_through_the_newest_labelled_candle(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    assert trained.refit.version == "1"
    bundle = _bundle(trained, "1")
    meta = bundle.metadata

    assert meta["refit"] is True
    # Horizon 1: the newest sample is the candle before the newest, whose label is the newest.
    assert pd.Timestamp(meta["fit_end"]) == btc_candles.index[-1]
    assert pd.Timestamp(meta["fit_end"]) > pd.Timestamp(meta["test_window"]["end"])
    # The held-out model, whose scores justify the version, learnt nothing of the test window.
    assert pd.Timestamp(meta["held_out_fit_end"]) < pd.Timestamp(meta["test_window"]["start"])
    samples = load_dataset(TrainConfig(**SMALL), settings=trained.settings, max_rows=400).samples
    assert meta["refit_window"]["rows"] == len(samples)
    version = trained.client.get_model_version(NAME, "1")
    assert version.tags["tbml.refit"] == "true"
    assert str(version.description).startswith("Refit on all candles")


def test_the_run_logs_the_refit_beside_the_held_out_record(trained: Trained) -> None:
    run = trained.client.get_run(trained.refit.run_id)
    best_epoch = int(run.data.metrics["best_epoch"])
    refit_epochs = best_epoch + 1  # the epochs whose weights the held-out run kept

    assert run.data.params["refit"] == "true"
    assert run.data.params["refit_epochs"] == str(refit_epochs)
    history = trained.client.get_metric_history(run.info.run_id, "refit_loss")
    assert [m.step for m in history] == list(range(refit_epochs))
    assert run.data.metrics["refit_final_loss"] == history[-1].value
    meta = _bundle(trained, "1").metadata
    assert meta["refit_epochs"] == refit_epochs
    assert run.data.tags["refit_data_end"] == meta["fit_end"]
    assert run.data.tags["refit_data_start"] == meta["refit_window"]["data_start"]
    # The held-out record is still the run's: its data range, test window and test metrics.
    assert run.data.tags["data_range"].endswith(meta["fit_end"])
    assert "test_log_loss" in run.data.metrics
    assert meta["test_metrics"]["log_loss"] == run.data.metrics["test_log_loss"]


def test_the_refit_predicts_otherwise_than_the_held_out_model(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    scored = _score_test_window(_bundle(trained, "1"), btc_candles)
    held_out = _held_out_predictions(trained, trained.refit.run_id)

    assert list(held_out[TIMESTAMP]) == list(scored.timestamps)
    assert not np.allclose(scored.proba, held_out[MODEL].to_numpy(), atol=1e-3)


def test_without_refit_the_registered_model_is_the_held_out_one_ending_at_validation(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    bundle = _bundle(trained, "2")
    meta = bundle.metadata
    run = trained.client.get_run(trained.held_out.run_id)

    assert meta["refit"] is False
    assert "held_out_fit_end" not in meta
    assert pd.Timestamp(meta["fit_end"]) < pd.Timestamp(meta["test_window"]["start"])
    assert pd.Timestamp(meta["fit_end"]) == pd.Timestamp(meta["val_window"]["end"]) + pd.Timedelta(
        hours=1
    )
    assert run.data.params["refit"] == "false"
    assert "refit_final_loss" not in run.data.metrics
    assert "refit_data_end" not in run.data.tags
    assert trained.client.get_model_version(NAME, "2").tags["tbml.refit"] == "false"
    # Its bundle gives the run's held-out predictions.
    scored = _score_test_window(bundle, btc_candles)
    held_out = _held_out_predictions(trained, trained.held_out.run_id)
    np.testing.assert_allclose(scored.proba, held_out[MODEL].to_numpy(), atol=1e-5)


def test_the_gate_never_scores_a_refit_model_on_rows_it_trained_on(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    # These tiny trainings test on 58 rows; the gate decides on them only when allowed to.
    settings = trained.settings.model_copy(update={"gate_min_rows": 10})
    client = trained.client
    apply_gate(client, name=NAME, version="2", candles=btc_candles, settings=settings, force=True)

    # The refit challenger against the held-out production version: compared on all the rows
    # of its test window through its held-out model's predictions, not its refit bundle's.
    challenger = apply_gate(client, name=NAME, version="1", candles=btc_candles, settings=settings)

    held_out = _held_out_predictions(trained, trained.refit.run_id)
    assert challenger.rows == len(held_out) == trained.refit.scores.y.size
    expected = classification_metrics(
        y_true=held_out["outcome"].to_numpy(), proba=held_out[MODEL].to_numpy()
    )["log_loss"]
    assert challenger.challenger == pytest.approx(expected, abs=1e-9)
    refit_scored = _score_test_window(_bundle(trained, "1"), btc_candles)
    refit_loss = classification_metrics(y_true=refit_scored.y, proba=refit_scored.proba)["log_loss"]
    assert challenger.challenger != pytest.approx(refit_loss, abs=1e-6)

    # Now production is whichever won; with the refit in production, a challenger's test
    # window holds no row the refit did not learn, and the gate refuses to compare.
    apply_gate(client, name=NAME, version="1", candles=btc_candles, settings=settings, force=True)
    decision = apply_gate(client, name=NAME, version="2", candles=btc_candles, settings=settings)

    assert not decision.promoted
    assert decision.rows == 0
    assert "ML_GATE_MIN_ROWS" in decision.reason
    assert str(client.get_model_version_by_alias(NAME, "production").version) == "1"
