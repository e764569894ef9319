"""The bundle of a training: a Keras model exported to ONNX (checked against Keras) or a tabular
model's head (checked against the fitted model), both before anything is logged, and the
logistic baseline and the magnitude head (`mlproject.magnitude_fit.fit_head`) that ship beside
it."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from mlproject import baselines
from mlproject.data import Dataset, decided_rows, labels
from mlproject.tabular import TabularModel
from pipelines.calibration import Calibrator
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import FeatureSpec
from pipelines.heads import HEAD_FILE
from pipelines.magnitude import MagnitudeHead
from pipelines.modelbundle import MODEL_FILE, LogisticBaseline, ModelBundle

logger = logging.getLogger(__name__)

# Keras and onnxruntime agree to ~1e-7 on these small graphs; more means a broken export.
ONNX_TOLERANCE = 1e-5


class ExportMismatchError(RuntimeError):
    """The ONNX export does not give the Keras model's outputs."""


def logistic_baseline(
    dataset: Dataset, rows: range, scaler: FeatureScaler, *, seed: int
) -> LogisticBaseline:
    """The run's logistic baseline (`mlproject.baselines.fit_logistic`) fitted on the scaled
    features of the last step of each window ending on `rows`, the rows the bundle's model
    learnt (with the bundle's scaler): on the held-out run's training rows and scaler it is the
    `logistic` the run scores on its test window. Rows with a tied outcome are left out."""
    y = labels(dataset, rows)  # ties already left out: the rows of `decided_rows`
    x = scaler.transform(dataset.features[decided_rows(dataset, rows)])
    coef, intercept = baselines.fit_logistic(x_train=x, y_train=y, seed=seed)
    return LogisticBaseline(names=tuple(dataset.spec.names), coef=coef, intercept=intercept)


def export_bundle(
    model: keras.Model,
    *,
    directory: Path,
    scaler: FeatureScaler,
    spec: FeatureSpec,
    metadata: dict[str, object],
    check_windows: np.ndarray,
    calibrator: Calibrator | None = None,
    baseline: LogisticBaseline | None = None,
    magnitude: MagnitudeHead | None = None,
) -> tuple[ModelBundle, float]:
    """Export `model` to `directory/model.onnx`, save the bundle there, compare outputs.

    Args:
        check_windows: scaled windows on which ONNX and Keras must agree within
            `ONNX_TOLERANCE` (the test window).
        calibrator: applied after the ONNX output when the bundle predicts (None: identity).
            The check compares the uncalibrated outputs: the calibrator is the same numpy
            code whichever model feeds it.
        baseline: the logistic baseline shipped in the bundle (`logistic_baseline`).
        magnitude: the magnitude head shipped in the bundle.

    Returns:
        The bundle and the largest absolute difference between the two on `check_windows`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / MODEL_FILE
    model.export(str(onnx_path), format="onnx", verbose=False)
    bundle = ModelBundle(
        onnx_path=onnx_path,
        scaler=scaler,
        spec=spec,
        metadata=dict(metadata),
        calibrator=calibrator if calibrator is not None else Calibrator(),
        baseline=baseline,
        magnitude=magnitude,
    )
    bundle.save(directory)
    keras_out = np.asarray(model.predict(check_windows, batch_size=1024, verbose=0)).reshape(-1)
    onnx_out = bundle.predict_proba(check_windows, scaled=True, calibrated=False)
    diff = float(np.max(np.abs(keras_out - onnx_out))) if keras_out.size else 0.0
    if not diff <= ONNX_TOLERANCE:
        raise ExportMismatchError(
            f"ONNX export differs from the Keras model by {diff:.2e} "
            f"(tolerance {ONNX_TOLERANCE:.0e}); not registering it"
        )
    logger.info("ONNX export matches Keras within %.1e", diff)
    return bundle, diff


def export_head_bundle(
    model: TabularModel,
    *,
    directory: Path,
    scaler: FeatureScaler,
    spec: FeatureSpec,
    metadata: dict[str, object],
    check_windows: np.ndarray,
    calibrator: Calibrator | None = None,
    baseline: LogisticBaseline | None = None,
    magnitude: MagnitudeHead | None = None,
) -> tuple[ModelBundle, float]:
    """Save a tabular model's bundle (`head.json` and its files) to `directory`, reload it and
    compare: the reloaded head must give the fitted model's outputs on `check_windows` (scaled,
    at least the head's steps long) within `ONNX_TOLERANCE`.

    Returns:
        The reloaded bundle and the largest absolute difference on `check_windows`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ModelBundle(
        onnx_path=directory / HEAD_FILE,
        head=model.head,
        scaler=scaler,
        spec=spec,
        metadata=dict(metadata),
        calibrator=calibrator if calibrator is not None else Calibrator(),
        baseline=baseline,
        magnitude=magnitude,
    ).save(directory)
    bundle = ModelBundle.load(directory)
    assert bundle.head is not None  # head.json was just written
    fitted = model.predict(check_windows)
    reloaded = np.asarray(bundle.head.proba(check_windows), dtype=np.float64)
    diff = float(np.max(np.abs(fitted - reloaded))) if fitted.size else 0.0
    if not diff <= ONNX_TOLERANCE:
        raise ExportMismatchError(
            f"the saved {model.head.kind} model differs from the fitted one by {diff:.2e} "
            f"(tolerance {ONNX_TOLERANCE:.0e}); not registering it"
        )
    return bundle, diff
