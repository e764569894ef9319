"""A seed ensemble served as one graph: the mean of its members, in Keras and in ONNX."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest

from mlproject.architectures import INPUT_NAME, average_models, build_model

pytestmark = pytest.mark.slow

LENGTH, FEATURES = 6, 3


def _member(seed: int, *, length: int = LENGTH) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_model(
        model_type="cnn",
        sequence_length=length,
        n_features=FEATURES,
        units=4,
        layers=2,
        dropout=0.1,
        learning_rate=0.01,
    )
    # The logit weights start at zero; values make each member's output its own.
    rng = np.random.default_rng(seed)
    for name in ("logit_body", "logit_skip"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    return model


def _windows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(32, LENGTH, FEATURES)).astype(np.float32)


def test_average_exports_to_onnx_giving_the_members_mean(tmp_path: Path) -> None:
    members = [_member(1), _member(2)]
    x = _windows()
    outputs = [m.predict(x, verbose=0).reshape(-1) for m in members]
    assert np.abs(outputs[0] - outputs[1]).max() > 0.05  # a mean unlike either member

    averaged = average_models(members)
    path = tmp_path / "model.onnx"
    averaged.export(str(path), format="onnx", verbose=False)
    session = ort.InferenceSession(str(path))
    onnx_out = np.asarray(session.run(None, {INPUT_NAME: x})[0]).reshape(-1)

    mean = np.mean(outputs, axis=0)
    np.testing.assert_allclose(onnx_out, mean, atol=1e-5)
    np.testing.assert_allclose(averaged.predict(x, verbose=0).reshape(-1), mean, atol=1e-6)
    np.testing.assert_array_equal(members[0].predict(x, verbose=0).reshape(-1), outputs[0])


def test_average_saves_and_reloads(tmp_path: Path) -> None:
    averaged = average_models([_member(1), _member(2)])
    x = _windows()
    averaged.save(tmp_path / "average.keras")

    reloaded = keras.saving.load_model(tmp_path / "average.keras")

    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), averaged.predict(x, verbose=0))


def test_average_of_one_model_is_that_model() -> None:
    member = _member(1)
    x = _windows()

    out = average_models([member]).predict(x, verbose=0)

    np.testing.assert_array_equal(out, member.predict(x, verbose=0))


def test_average_of_no_models_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one model, got none"):
        average_models([])


def test_average_of_different_inputs_is_refused() -> None:
    with pytest.raises(ValueError, match="must share one input shape"):
        average_models([_member(1), _member(2, length=LENGTH + 1)])
