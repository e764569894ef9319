"""ONNX export of a Keras model, checked against Keras before anything is logged."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from pipelines.calibration import Calibrator
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import FeatureSpec
from pipelines.modelbundle import MODEL_FILE, ModelBundle

logger = logging.getLogger(__name__)

# Keras and onnxruntime agree to ~1e-7 on these small graphs; more means a broken export.
ONNX_TOLERANCE = 1e-5


class ExportMismatchError(RuntimeError):
    """The ONNX export does not give the Keras model's outputs."""


def export_bundle(
    model: keras.Model,
    *,
    directory: Path,
    scaler: FeatureScaler,
    spec: FeatureSpec,
    metadata: dict[str, object],
    check_windows: np.ndarray,
    calibrator: Calibrator | None = None,
) -> tuple[ModelBundle, float]:
    """Export `model` to `directory/model.onnx`, save the bundle there, compare outputs.

    Args:
        check_windows: scaled windows on which ONNX and Keras must agree within
            `ONNX_TOLERANCE` (the test window).
        calibrator: applied after the ONNX output when the bundle predicts (None: identity).
            The check compares the uncalibrated outputs: the calibrator is the same numpy
            code whichever model feeds it.

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
