"""Every architecture builds, predicts probabilities, and exports to ONNX with the same outputs;
the last-step readout and the linear skip let a network do what a logistic regression does."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mlproject.architectures import build_model
from mlproject.export import ONNX_TOLERANCE, export_bundle
from mlproject.fit import fit_model, make_deterministic
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.lifecycle.scores import log_loss
from pipelines.modelbundle import ModelBundle
from pipelines.settings import NETWORK_TYPES

pytestmark = pytest.mark.slow

LENGTH = 10


def _tiny(model_type: str, **options: object) -> keras.Model:
    return build_model(
        model_type=model_type,
        sequence_length=LENGTH,
        n_features=3,
        units=4,
        layers=2,
        dropout=0.0,
        learning_rate=0.001,
        **options,  # type: ignore[arg-type]
    )


def _randomise_head(model: keras.Model, rng: np.random.Generator) -> None:
    """Give the zero-initialised logit weights values, so the output depends on the body."""
    layer = model.get_layer("logit_body")
    layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])


@pytest.mark.parametrize("model_type", NETWORK_TYPES)
def test_onnx_export_gives_the_keras_outputs(model_type: str, tmp_path: Path) -> None:
    spec = default_spec()
    n_features = len(spec.names)
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
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
    _randomise_head(model, rng)
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
    assert keras_out.std() > 0.01  # the body shapes the output: the comparison can fail
    assert bundle.onnx_path.stat().st_size > 0


def test_unknown_model_type_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed model types are lstm, gru, cnn, transformer"):
        _tiny("forest")


def test_a_tabular_model_type_is_refused() -> None:
    with pytest.raises(ValueError, match="'lightgbm' is not a network"):
        _tiny("lightgbm")


def test_unknown_readout_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown readout 'max': allowed are last, mean"):
        _tiny("cnn", readout="max")


def _changed_step(x: np.ndarray, step: int) -> np.ndarray:
    changed = x.copy()
    changed[:, step, :] += 3.0
    return changed


def test_cnn_last_readout_sees_its_receptive_field_only() -> None:
    # Two causal convolutions of width 3: the last step's hidden state sees the last 5 steps.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = _tiny("cnn", skip=False)
    _randomise_head(model, rng)
    x = rng.normal(size=(8, LENGTH, 3)).astype(np.float32)
    out = model.predict(x, verbose=0)

    outside = model.predict(_changed_step(x, LENGTH - 6), verbose=0)
    inside = model.predict(_changed_step(x, LENGTH - 5), verbose=0)

    np.testing.assert_array_equal(outside, out)
    assert np.abs(inside - out).max() > 1e-3


def test_cnn_mean_readout_sees_every_step() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = _tiny("cnn", skip=False, readout="mean")
    _randomise_head(model, rng)
    x = rng.normal(size=(8, LENGTH, 3)).astype(np.float32)

    first = model.predict(_changed_step(x, 0), verbose=0)

    assert np.abs(first - model.predict(x, verbose=0)).max() > 1e-3


def test_transformer_last_readout_attends_to_the_first_step() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = _tiny("transformer", skip=False)
    _randomise_head(model, rng)
    x = rng.normal(size=(8, LENGTH, 3)).astype(np.float32)

    first = model.predict(_changed_step(x, 0), verbose=0)

    assert np.abs(first - model.predict(x, verbose=0)).max() > 1e-3


def test_skip_alone_is_a_logistic_regression_on_the_last_step() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    model = _tiny("lstm")
    coef, intercept = rng.normal(size=3), 0.3
    model.get_layer("logit_skip").set_weights([coef.reshape(3, 1), np.array([intercept])])
    x = rng.normal(size=(16, LENGTH, 3)).astype(np.float32)

    out = model.predict(x, verbose=0).reshape(-1)

    expected = 1.0 / (1.0 + np.exp(-(x[:, -1, :] @ coef + intercept)))
    np.testing.assert_allclose(out, expected, atol=1e-6)


# Windows whose label is a noisy linear function of the last step's features only.
WINDOWS, FEATURES = 2000, 8
# Shrinks the body towards the skip: without it the cnn's body fits noise for 0.005-0.02 nats.
BODY_L2 = 0.1


def _last_step_problem(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(WINDOWS, LENGTH, FEATURES)).astype(np.float32)
    logit = x[:, -1, :] @ (0.5 * rng.normal(size=FEATURES)) + 0.2
    y = (rng.random(WINDOWS) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    train, val = int(0.6 * WINDOWS), int(0.8 * WINDOWS)
    return x[:train], y[:train], x[train:val], y[train:val], x[val:], y[val:]


def _held_out_gap(model_type: str, *, readout: str, skip: bool, seed: int = 0) -> float:
    """The network's held-out log loss minus the logistic regression's (nats)."""
    x_train, y_train, x_val, y_val, x_test, y_test = _last_step_problem(seed)
    logistic = LogisticRegression(C=1.0, max_iter=2000).fit(x_train[:, -1, :], y_train)
    make_deterministic(seed)
    model = build_model(
        model_type=model_type,
        sequence_length=LENGTH,
        n_features=FEATURES,
        units=8,
        layers=1,
        dropout=0.2,
        learning_rate=0.01,
        readout=readout,
        skip=skip,
        body_l2=BODY_L2,
    )
    fit_model(
        model,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        epochs=20,
        batch_size=64,
        patience=5,
    )
    network = log_loss(model.predict(x_test, verbose=0).reshape(-1), y_test)
    return network - log_loss(logistic.predict_proba(x_test[:, -1, :])[:, 1], y_test)


@pytest.mark.parametrize("model_type", ["lstm", "cnn"])
def test_skip_lets_a_network_match_logistic_regression(model_type: str) -> None:
    assert _held_out_gap(model_type, readout="last", skip=True) < 0.01


def test_cnn_mean_readout_without_skip_falls_short_of_logistic_regression() -> None:
    # The old head: the mean over the steps blurs the last step into nine steps of noise.
    assert _held_out_gap("cnn", readout="mean", skip=False) > 0.03
