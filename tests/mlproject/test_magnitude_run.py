"""The magnitude head through real trainings: shipped in the registered bundle, judged and logged.

Two tiny real trainings on the bundled BTC candles into one temporary tracking store: a tabular
`logistic` model with the refit (the default) and three walk-forward verdict folds of 100 rows,
and a one-epoch LSTM without the refit. Each registered version must carry the magnitude head
fitted on the rows its model learnt (a HAR inside each window and the calendar, with the
signal's magnitude gate recorded beside it), the run must log the head's scores against its
baselines, and the registered pyfunc's `move` must be the bundle's `move_proba` on the same
candles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from mlproject.config import TrainConfig
from mlproject.data import fit_scaler_on
from mlproject.fold import verdict_splits
from mlproject.magnitude_fit import BASELINES, METRICS, fit_head, move_proba, window_spans
from mlproject.train import TrainingOutcome, _refit_rows, load_dataset, train
from pipelines.features.compute import compute_features
from pipelines.modelbundle import ModelBundle, download_bundle
from pipelines.pyfunc_model import exact_candles, example_candles
from pipelines.settings import Settings
from tests.conftest import stores_under

pytestmark = pytest.mark.slow

TABULAR: dict[str, Any] = {
    "pair": "BTC",
    "model_type": "logistic",
    "sequence_length": 12,
    "max_rows": 1500,
}
NETWORK: dict[str, Any] = {
    "pair": "BTC",
    "model_type": "lstm",
    "epochs": 1,
    "sequence_length": 12,
    "units": 8,
    "layers": 1,
    "max_rows": 400,
}


@dataclass(frozen=True)
class Trained:
    settings: Settings
    client: MlflowClient
    root: Path
    outcomes: dict[str, TrainingOutcome]  # by model type

    def bundle(self, kind: str) -> ModelBundle:
        outcome = self.outcomes[kind]
        assert outcome.registered_model is not None
        assert outcome.version is not None
        return download_bundle(
            self.client,
            name=outcome.registered_model,
            version=outcome.version,
            dst=self.root / f"bundle-{kind}",
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("magnitude")
    settings = stores_under(root, verdict_folds=3, verdict_test_rows=100)
    assert settings.refit is True  # the default
    outcomes = {
        "logistic": train(TrainConfig(**TABULAR), settings=settings),
        "lstm": train(
            TrainConfig(**NETWORK), settings=settings.model_copy(update={"refit": False})
        ),
    }
    return Trained(settings, MlflowClient(settings.tracking_uri), root, outcomes)


@pytest.mark.parametrize("kind", ["logistic", "lstm"])
def test_the_registered_bundle_ships_the_magnitude_head_of_the_round_trip_fee(
    trained: Trained, kind: str
) -> None:
    bundle = trained.bundle(kind)

    assert bundle.magnitude is not None
    assert bundle.magnitude.names == bundle.spec.names
    assert bundle.magnitude.threshold == pytest.approx(2 * trained.settings.trading_fee)
    assert bundle.magnitude.horizon == bundle.horizon
    assert bundle.metadata["magnitude"]["threshold"] == bundle.magnitude.threshold
    # A HAR inside the window (12 candles here: the last one and all 12) and the calendar.
    assert bundle.magnitude.window == ("ret_1", "hl_range")
    assert bundle.magnitude.spans == (1, 12) == window_spans(bundle.sequence_length)
    assert bundle.magnitude.last_step == ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
    # The gate of the signal, recorded where the pyfunc reads it.
    assert bundle.metadata["move_gate"] is trained.settings.move_gate
    assert bundle.metadata["move_threshold"] == trained.settings.move_threshold


@pytest.mark.parametrize("kind", ["logistic", "lstm"])
def test_the_head_is_fitted_on_the_rows_and_scaler_of_the_bundles_model(
    trained: Trained, kind: str
) -> None:
    bundle = trained.bundle(kind)
    assert bundle.magnitude is not None
    config = TrainConfig(**(TABULAR if kind == "logistic" else NETWORK))
    dataset = load_dataset(config, settings=trained.settings, max_rows=config.max_rows)
    if kind == "logistic":  # the refit: every sample but the held ones
        rows = _refit_rows(dataset, hold=trained.settings.gate_min_rows)[0]
        assert bundle.metadata["refit"] is True
    else:  # the held-out model: its training rows
        rows = verdict_splits(dataset, config=config, settings=trained.settings)[-1].train
        assert bundle.metadata["train_window"]["rows"] == len(rows)
    scaler = fit_scaler_on(dataset, rows)
    np.testing.assert_array_equal(bundle.scaler.mean, scaler.mean)

    again = fit_head(dataset, rows, scaler, threshold=bundle.magnitude.threshold, seed=config.seed)

    np.testing.assert_allclose(bundle.magnitude.coef, again.coef, rtol=1e-9, atol=1e-12)
    assert bundle.magnitude.intercept == pytest.approx(again.intercept, rel=1e-9)
    np.testing.assert_allclose(bundle.magnitude.center, again.center, rtol=1e-12)
    np.testing.assert_allclose(bundle.magnitude.scale, again.scale, rtol=1e-12)
    # What training scores is what the bundle serves: the windows ending on the same rows.
    ends = np.arange(rows.stop - 40, rows.stop)
    length = dataset.sequence_length
    windows = np.stack([dataset.features[end - length + 1 : end + 1] for end in ends])
    served = bundle.move_proba(windows)
    assert served is not None
    np.testing.assert_allclose(move_proba(bundle.magnitude, dataset, ends, scaler), served)
    assert np.ptp(served) > 0.01  # a probability that varies with the windows


@pytest.mark.parametrize("kind", ["logistic", "lstm"])
def test_the_run_logs_the_heads_scores_against_its_baselines(trained: Trained, kind: str) -> None:
    outcome = trained.outcomes[kind]
    metrics = trained.client.get_run(outcome.run_id).data.metrics
    recorded = trained.bundle(kind).metadata["magnitude"]

    assert set(METRICS) <= set(metrics)
    for name in METRICS:
        assert metrics[name] == pytest.approx(recorded[name]), name
    assert 0.0 < metrics["move_log_loss"] < 2.0
    assert 0.0 < metrics["move_auc"] < 1.0
    verdicts = recorded["verdicts"]
    assert set(verdicts) == set(BASELINES)
    for name in BASELINES:
        assert verdicts[name]["rows"] == recorded["rows"]
        assert metrics[f"move_{name}_log_loss"] - metrics["move_log_loss"] == pytest.approx(
            -verdicts[name]["mean"], abs=1e-9
        )
    beats = all(verdicts[name]["high"] < 0 for name in BASELINES)
    assert metrics["move_beats_baseline"] == float(beats)
    assert recorded["beats_baseline"] is beats
    # The tabular verdict walks forward over three folds of 100 rows; every row is scored.
    if kind == "logistic":
        assert recorded["rows"] == 300
    assert 0.0 < recorded["positive_rate"] < 1.0


@pytest.mark.parametrize("kind", ["logistic", "lstm"])
def test_the_pyfunc_move_is_the_bundles_move_proba_on_the_same_candles(
    trained: Trained, kind: str
) -> None:
    bundle = trained.bundle(kind)
    outcome = trained.outcomes[kind]
    candles = load_dataset(
        TrainConfig(**(TABULAR if kind == "logistic" else NETWORK)), settings=trained.settings
    ).candles
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(trained.settings.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{outcome.registered_model}/{outcome.version}")
    finally:
        mlflow.set_tracking_uri(previous)
    answers, expected = [], []
    for end in (len(candles), len(candles) - 7):
        tail = candles.iloc[end - exact_candles(bundle) : end]  # what the pyfunc is given
        answers.append(float(model.predict(example_candles(tail, rows=len(tail)))["move"].iloc[0]))
        features = compute_features(tail, spec=bundle.spec)
        windows = bundle.windows(features.iloc[-bundle.sequence_length :])
        moves = bundle.move_proba(windows)
        assert moves is not None
        expected.append(float(moves[-1]))

    np.testing.assert_allclose(answers, expected, rtol=1e-6)
    assert answers[0] != answers[1]  # a probability that varies with the candles
