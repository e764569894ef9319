"""One split, end to end: scale, window, fit, calibrate, predict the test rows, score them.

The calibrator is chosen on the validation rows (`settings.calibration`,
`pipelines.calibration.choose_calibrator`: kept only when it helps on held validation rows, the
identity otherwise) and the test rows are scored with the served probabilities: what the bundle
serves is what the metrics, verdicts and gate see. Every part's rows leave ties out
(`mlproject.data.decided_rows`): the model, its calibrator and the baselines learn and are
scored on the same up-or-down rows.

The training run and every fold of the walk-forward evaluation go through `fit_and_score`, so
what the evaluation reports is what a training does.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from mlproject.architectures import build_model
from mlproject.config import TrainConfig
from mlproject.data import Dataset, Split, fit_scaler, labels, next_returns, windows
from mlproject.fit import EpochSink, FitResult, fit_model, make_deterministic
from mlproject.scoring import Scores, fit_baselines, score
from pipelines.calibration import CalibrationReport, Calibrator, choose_calibrator
from pipelines.features.scaler import FeatureScaler
from pipelines.settings import Settings


@dataclass(frozen=True)
class FoldResult:
    """The fitted model, scaler and calibrator, the fit's history and the scores on the test rows.

    `scores` are of the served (calibrated, or raw when no calibrator was kept) probabilities;
    `raw_proba` are the model's own on the same test rows, before calibration.
    """

    split: Split
    model: keras.Model
    scaler: FeatureScaler
    fit: FitResult
    x_test: np.ndarray
    scores: Scores
    raw_proba: np.ndarray
    calibrator: Calibrator
    calibration: CalibrationReport


def configured_model(config: TrainConfig, dataset: Dataset) -> keras.Model:
    """A fresh model of `config`'s architecture and hyperparameters for `dataset`'s windows."""
    return build_model(
        model_type=config.model_type,
        sequence_length=dataset.sequence_length,
        n_features=len(dataset.spec.names),
        units=config.units,
        layers=config.layers,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
    )


def fit_and_score(
    dataset: Dataset,
    split: Split,
    *,
    config: TrainConfig,
    settings: Settings,
    on_epoch: EpochSink | None = None,
) -> FoldResult:
    """Fit `config`'s model on `split.train` (early stopping on `split.val`), calibrate it on
    `split.val`, score `split.test` with the calibrated probabilities."""
    make_deterministic(config.seed)
    scaler = fit_scaler(dataset, split)
    x_train, y_train = windows(dataset, scaler, split.train), labels(dataset, split.train)
    x_val, y_val = windows(dataset, scaler, split.val), labels(dataset, split.val)
    x_test, y_test = windows(dataset, scaler, split.test), labels(dataset, split.test)
    model = configured_model(config, dataset)
    fit = fit_model(
        model,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        epochs=config.epochs,
        batch_size=config.batch_size,
        patience=settings.early_stopping_patience,
        on_epoch=on_epoch,
    )
    calibrator, report = choose_calibrator(
        predict(model, x_val), y_val.astype(np.int8), mode=settings.calibration
    )
    raw_proba = predict(model, x_test)
    scores = score(
        y=y_test.astype(np.int8),
        model_proba=calibrator.apply(raw_proba),
        baseline_predictions=fit_baselines(dataset, split, scaler, seed=config.seed),
        returns=next_returns(dataset, split.test),
        settings=settings,
    )
    return FoldResult(
        split=split,
        model=model,
        scaler=scaler,
        fit=fit,
        x_test=x_test,
        scores=scores,
        raw_proba=raw_proba,
        calibrator=calibrator,
        calibration=report,
    )


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Probabilities of "up" as float64, one per window."""
    return np.asarray(model.predict(x, batch_size=1024, verbose=0), dtype=np.float64).reshape(-1)
