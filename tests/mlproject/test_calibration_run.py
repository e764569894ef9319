"""Calibration through the real training: the fold scores calibrated probabilities, the run logs
the choice and the curves, and the registered model serves the calibrator over its ONNX output.

Tiny real trainings on the newest 400 BTC candles into a temporary tracking store, with
`ML_CALIBRATION=platt` so that the calibrator is never the identity: one held-out model
(`ML_REFIT=false`) and one refit, which carries the held-out model's calibrator.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlproject.config import TrainConfig
from mlproject.data import time_split
from mlproject.fold import fit_and_score, predict
from mlproject.metrics import classification_metrics
from mlproject.scoring import MODEL, score_bundle
from mlproject.train import RELIABILITY_ARTIFACT, TrainingOutcome, load_dataset, train
from mlproject.verdict import PREDICTIONS_ARTIFACT
from pipelines.calibration import Calibrator, expected_calibration_error
from pipelines.modelbundle import CALIBRATION_FILE, ModelBundle, download_bundle
from pipelines.pyfunc_model import exact_candles, example_candles, predict_newest
from pipelines.settings import Settings
from tests.conftest import BUNDLED, stores_under

pytestmark = pytest.mark.slow

NAME = "BTC-lstm"
SMALL: dict[str, Any] = {
    "pair": "BTC",
    "epochs": 2,
    "sequence_length": 12,
    "units": 8,
    "layers": 1,
    "max_rows": 400,
}


@dataclass(frozen=True)
class Trained:
    settings: Settings
    client: MlflowClient
    held_out: TrainingOutcome  # version 1, ML_REFIT=false
    refit: TrainingOutcome  # version 2
    root: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("calibration")
    settings = stores_under(root, calibration="platt")
    held_out = train(
        TrainConfig(**SMALL, promote=False), settings=settings.model_copy(update={"refit": False})
    )
    refit = train(TrainConfig(**SMALL, promote=False), settings=settings)
    return Trained(settings, MlflowClient(settings.tracking_uri), held_out, refit, root)


def _bundle(trained: Trained, version: str) -> ModelBundle:
    return download_bundle(
        trained.client, name=NAME, version=version, dst=trained.root / f"bundle-{version}"
    )


def _record(trained: Trained, run_id: str) -> dict[str, Any]:
    path = trained.client.download_artifacts(
        run_id, RELIABILITY_ARTIFACT, str(trained.root / f"record-{run_id}")
    )
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def _test_window(bundle: ModelBundle, candles: pd.DataFrame) -> pd.DatetimeIndex:
    window = bundle.metadata["test_window"]
    index = candles.index
    return pd.DatetimeIndex(
        index[(index >= pd.Timestamp(window["start"])) & (index <= pd.Timestamp(window["end"]))]
    )


def test_fit_and_score_scores_the_calibrated_probabilities_and_keeps_the_raw_ones(
    tmp_path: Path,
) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, bundled_data_dir=BUNDLED, calibration="isotonic"
    )
    dataset = load_dataset(TrainConfig(**SMALL), settings=settings, max_rows=400)
    split = time_split(
        dataset, val_fraction=settings.validation_fraction, test_fraction=settings.test_fraction
    )

    result = fit_and_score(dataset, split, config=TrainConfig(**SMALL), settings=settings)

    assert result.calibrator.method == result.calibration.method == "isotonic"
    assert result.calibrator.rows == result.calibration.rows == len(split.val)
    np.testing.assert_array_equal(result.raw_proba, predict(result.model, result.x_test))
    calibrated = result.scores.predictions[MODEL].proba
    np.testing.assert_array_equal(calibrated, result.calibrator.apply(result.raw_proba))
    assert not np.allclose(calibrated, result.raw_proba)
    expected = classification_metrics(y_true=result.scores.y, proba=calibrated)
    assert result.scores.metrics[MODEL]["log_loss"] == pytest.approx(expected["log_loss"])


def test_run_logs_the_choice_the_ece_before_and_after_and_the_reliability_curves(
    trained: Trained,
) -> None:
    run_id = trained.held_out.run_id
    run = trained.client.get_run(run_id)
    record = _record(trained, run_id)
    predictions = pd.read_csv(
        trained.client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, str(trained.root))
    )

    assert run.data.params["calibration"] == "platt"
    assert run.data.params["calibration_mode"] == "platt"
    metrics = run.data.metrics
    for method in ("none", "platt", "isotonic"):
        assert np.isfinite(metrics[f"calibration_heldout_log_loss_{method}"])
        assert record["choice"]["held_log_loss"][method] == pytest.approx(
            metrics[f"calibration_heldout_log_loss_{method}"]
        )
    # The verdict's per-row probabilities are the calibrated ones: their ECE is `ece_after`.
    outcomes, served = predictions["outcome"].to_numpy(), predictions[MODEL].to_numpy()
    assert metrics["ece_after"] == pytest.approx(expected_calibration_error(served, outcomes))
    assert metrics["ece_before"] == record["before"]["ece"]
    assert metrics["ece_after"] == record["after"]["ece"]
    assert metrics["ece_before"] != metrics["ece_after"]
    for side in ("before", "after"):
        curve = record[side]["curve"]
        assert sum(b["count"] for b in curve) == record["rows"] == metrics["test_rows"]
        assert all(0 <= b["mean_predicted"] <= 1 and 0 <= b["observed_rate"] <= 1 for b in curve)
    assert record["choice"]["method"] == record["calibrator"]["method"] == "platt"
    plot = trained.client.download_artifacts(run_id, "plots/reliability.png", str(trained.root))
    assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registered_bundle_predicts_its_calibrator_over_the_raw_onnx_output(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    bundle = _bundle(trained, "1")
    record = _record(trained, trained.held_out.run_id)

    assert (Path(bundle.onnx_path).parent / CALIBRATION_FILE).is_file()
    assert bundle.calibrator == Calibrator.from_dict(record["calibrator"])
    assert bundle.calibrator.method == "platt"
    assert bundle.metadata["calibration"]["fitted_on"] == "validation rows"
    assert bundle.metadata["calibration"]["method"] == "platt"
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(32, 12, len(bundle.spec.names))).astype(np.float32)
    raw = bundle.predict_proba(windows, scaled=True, calibrated=False)
    served = bundle.predict_proba(windows, scaled=True)
    np.testing.assert_array_equal(served, bundle.calibrator.apply(raw))
    assert not np.allclose(served, raw)
    # On its test window it gives the run's held-out (calibrated) predictions.
    scored = score_bundle(
        bundle,
        candles=btc_candles,
        timestamps=_test_window(bundle, btc_candles),
        horizon=bundle.horizon,
    )
    logged = pd.read_csv(
        trained.client.download_artifacts(
            trained.held_out.run_id, PREDICTIONS_ARTIFACT, str(trained.root / "held")
        )
    )
    np.testing.assert_allclose(scored.proba, logged[MODEL].to_numpy(), atol=1e-5)


def test_the_pyfunc_model_answers_calibrated_probabilities(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    bundle = _bundle(trained, "1")
    version = trained.client.get_model_version(NAME, "1")
    example = example_candles(btc_candles, rows=exact_candles(bundle))

    answer = mlflow.pyfunc.load_model(str(version.source)).predict(example)

    raw = predict_newest(dataclasses.replace(bundle, calibrator=Calibrator()), example)
    probability = float(answer["probability"].iloc[0])
    assert probability == pytest.approx(
        float(bundle.calibrator.apply(raw["probability"].to_numpy())[0]), abs=1e-12
    )
    assert probability != pytest.approx(float(raw["probability"].iloc[0]), abs=1e-6)


def test_the_refit_bundle_carries_the_held_out_models_calibrator(trained: Trained) -> None:
    bundle = _bundle(trained, "2")
    record = _record(trained, trained.refit.run_id)

    assert bundle.metadata["refit"] is True
    assert bundle.calibrator == Calibrator.from_dict(record["calibrator"])
    assert bundle.calibrator.rows == bundle.metadata["val_window"]["rows"]
    assert bundle.metadata["calibration"]["fitted_on"] == "held-out model's validation rows"
    assert trained.client.get_run(trained.refit.run_id).data.params["calibration"] == "platt"
