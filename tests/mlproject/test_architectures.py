"""Every architecture builds, predicts probabilities, and exports to ONNX with the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlproject.architectures import build_model
from mlproject.export import ONNX_TOLERANCE, export_bundle
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.modelbundle import ModelBundle
from pipelines.settings import MODEL_TYPES

pytestmark = pytest.mark.slow

LENGTH = 10


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_onnx_export_gives_the_keras_outputs(model_type: str, tmp_path: Path) -> None:
    spec = default_spec()
    n_features = len(spec.names)
    rng = np.random.default_rng(0)
    model = build_model(
        model_type=model_type,
        sequence_length=LENGTH,
        n_features=n_features,
        units=8,
        layers=2,
        dropout=0.2,
        learning_rate=0.001,
    )
    x = rng.normal(size=(64, LENGTH, n_features)).astype(np.float32)
    model.fit(x, (rng.random(64) > 0.5).astype(np.float32), epochs=1, verbose=0)
    scaler = FeatureScaler.fit(rng.normal(size=(100, n_features)), names=spec.names)

    bundle, diff = export_bundle(
        model,
        directory=tmp_path / "bundle",
        scaler=scaler,
        spec=spec,
        metadata={"pair": "BTC", "model_type": model_type, "sequence_length": LENGTH, "horizon": 1},
        check_windows=x,
    )

    assert diff <= ONNX_TOLERANCE
    loaded = ModelBundle.load(tmp_path / "bundle")
    fresh = rng.normal(size=(32, LENGTH, n_features)).astype(np.float32)
    keras_out = np.asarray(model.predict(fresh, verbose=0)).reshape(-1)
    onnx_out = loaded.predict_proba(fresh, scaled=True)
    np.testing.assert_allclose(onnx_out, keras_out, atol=1e-5)
    assert ((onnx_out > 0) & (onnx_out < 1)).all()
    assert bundle.onnx_path.stat().st_size > 0


def test_unknown_model_type_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed model types are lstm, gru, cnn, transformer"):
        build_model(
            model_type="forest",
            sequence_length=LENGTH,
            n_features=3,
            units=4,
            layers=1,
            dropout=0.0,
            learning_rate=0.001,
        )
