"""Calibration through the real training: the fold keeps a calibrator only on its held-half
interval, scores the probabilities it serves, the run logs the decision and the curves, and the
registered model serves that calibrator over its ONNX output.

Tiny real trainings on the newest 400 BTC candles into a temporary tracking store, with
`ML_CALIBRATION=temperature`: one held-out model (`ML_REFIT=false`) and one refit, which serves
its network's own probabilities. Whether a tiny model's temperature is kept is the data's to say,
so these tests check the decision against its recomputation; the parity of an applied (non-
identity) temperature between the service and the pyfunc is tested where the calibrator is set
(tests/pipelines/test_pyfunc_model.py, tests/mlproject/test_served_model.py).
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
from mlproject.data import labels, time_split, windows
from mlproject.fold import fit_and_score, predict
from mlproject.metrics import classification_metrics
from mlproject.scoring import MODEL, score_bundle
from mlproject.train import RELIABILITY_ARTIFACT, TrainingOutcome, load_dataset, train
from mlproject.verdict import PREDICTIONS_ARTIFACT
from pipelines.calibration import Calibrator, choose_calibrator, expected_calibration_error
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.scores import log_losses
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
    settings = stores_under(root, calibration="temperature")
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


def test_fit_and_score_keeps_a_calibrator_only_on_its_held_interval_and_scores_what_it_serves(
    tmp_path: Path,
) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, bundled_data_dir=BUNDLED, calibration="temperature"
    )
    dataset = load_dataset(TrainConfig(**SMALL), settings=settings, max_rows=400)
    split = time_split(
        dataset, val_fraction=settings.validation_fraction, test_fraction=settings.test_fraction
    )

    result = fit_and_score(dataset, split, config=TrainConfig(**SMALL), settings=settings)

    report = result.calibration
    raw_val = predict(result.model, windows(dataset, result.scaler, split.val))
    y_val = labels(dataset, split.val).astype(np.int8)
    # The decision is the one choose_calibrator makes on the validation rows' raw outputs ...
    assert (result.calibrator, report) == choose_calibrator(raw_val, y_val, mode="temperature")
    assert report.mode == "temperature"
    assert report.rows == len(y_val)
    # ... which compares a temperature fitted on the first half with the raw second half.
    half = len(y_val) // 2
    trial = Calibrator.fit("temperature", raw_val[:half], y_val[:half])
    held_raw, held_y = raw_val[half:], y_val[half:]
    differences = log_losses(trial.apply(held_raw), held_y) - log_losses(held_raw, held_y)
    assert report.held == paired_interval(differences)
    assert report.kept == (report.held.high < 0)
    expected = Calibrator.fit("temperature", raw_val, y_val) if report.kept else Calibrator()
    assert result.calibrator == expected
    np.testing.assert_array_equal(result.raw_proba, predict(result.model, result.x_test))
    served = result.scores.predictions[MODEL].proba
    np.testing.assert_array_equal(served, result.calibrator.apply(result.raw_proba))
    metrics = classification_metrics(y_true=result.scores.y, proba=served)
    assert result.scores.metrics[MODEL]["log_loss"] == pytest.approx(metrics["log_loss"])


def test_run_logs_the_decision_the_ece_before_and_after_and_the_reliability_curves(
    trained: Trained,
) -> None:
    run_id = trained.held_out.run_id
    run = trained.client.get_run(run_id)
    record = _record(trained, run_id)
    predictions = pd.read_csv(
        trained.client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, str(trained.root))
    )

    choice = record["choice"]
    params, metrics = run.data.params, run.data.metrics
    assert params["calibration_mode"] == choice["mode"] == "temperature"
    assert params["calibration"] == choice["method"] == record["calibrator"]["method"]
    assert params["calibration_kept"] == str(choice["kept"]).lower()
    assert choice["method"] == ("temperature" if choice["kept"] else "none")
    held = choice["held"]
    assert held["method"] == "newey-west"
    assert choice["kept"] == (held["high"] < 0)
    assert metrics["calibration_held_diff"] == pytest.approx(held["mean"])
    assert metrics["calibration_held_diff_low"] == pytest.approx(held["low"])
    assert metrics["calibration_held_diff_high"] == pytest.approx(held["high"])
    assert metrics["calibration_held_rows"] == held["rows"] == choice["held_rows"]
    for side in ("raw", "calibrated"):
        assert metrics[f"calibration_held_log_loss_{side}"] == pytest.approx(
            choice["held_log_loss"][side]
        )
    # The verdict's per-row probabilities are the served ones: their ECE is `ece_after`.
    outcomes, served = predictions["outcome"].to_numpy(), predictions[MODEL].to_numpy()
    assert metrics["ece_after"] == pytest.approx(expected_calibration_error(served, outcomes))
    assert metrics["ece_before"] == record["before"]["ece"]
    assert metrics["ece_after"] == record["after"]["ece"]
    for side in ("before", "after"):
        curve = record[side]["curve"]
        assert sum(b["count"] for b in curve) == record["rows"] == len(predictions)
        assert all(0 <= b["mean_predicted"] <= 1 and 0 <= b["observed_rate"] <= 1 for b in curve)
    plot = trained.client.download_artifacts(run_id, "plots/reliability.png", str(trained.root))
    assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registered_bundle_predicts_its_calibrator_over_the_raw_onnx_output(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    bundle = _bundle(trained, "1")
    record = _record(trained, trained.held_out.run_id)

    assert (Path(bundle.onnx_path).parent / CALIBRATION_FILE).is_file()
    assert bundle.calibrator == Calibrator.from_dict(record["calibrator"])
    meta = bundle.metadata["calibration"]
    assert meta["fitted_on"] == "validation rows"
    assert (meta["mode"], meta["method"]) == ("temperature", bundle.calibrator.method)
    assert meta["kept"] == record["choice"]["kept"]
    assert meta["held"] == record["choice"]["held"]
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(32, 12, len(bundle.spec.names))).astype(np.float32)
    raw = bundle.predict_proba(windows, scaled=True, calibrated=False)
    served = bundle.predict_proba(windows, scaled=True)
    np.testing.assert_array_equal(served, bundle.calibrator.apply(raw))
    # On its test window it gives the run's held-out (served) predictions, ties left out.
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


def test_the_pyfunc_model_answers_its_bundles_probabilities(
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


def test_the_refit_bundle_serves_its_own_probabilities_and_keeps_the_held_out_decision(
    trained: Trained,
) -> None:
    bundle = _bundle(trained, "2")
    record = _record(trained, trained.refit.run_id)

    assert bundle.metadata["refit"] is True
    # Never the held-out model's calibrator, which was chosen for other weights.
    assert bundle.calibrator == Calibrator()
    calibration = bundle.metadata["calibration"]
    assert calibration["kept"] is False
    assert calibration["held_out"]["kept"] == record["choice"]["kept"]
    assert calibration["held_out"]["held"] == record["choice"]["held"]
    assert calibration["held_out"]["mode"] == "temperature"
    params = trained.client.get_run(trained.refit.run_id).data.params
    assert params["calibration_mode"] == "temperature"
