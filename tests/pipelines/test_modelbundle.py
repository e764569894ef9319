"""The serving bundle: naming, save/load, prediction through onnxruntime, calibration, and no
TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipelines.calibration import Calibrator
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.modelbundle import CALIBRATION_FILE, METADATA_FILE, BundleError, ModelBundle
from pipelines.pairs import InvalidNameError
from pipelines.settings import PROJECT_ROOT
from pipelines.tracking import registered_model_name

LENGTH = 5


def _mean_sigmoid_onnx(path: Path, n_features: int) -> Path:
    """A real ONNX graph: p = sigmoid(mean of the window), so outputs are checkable by hand."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["features"], ["m"], axes=[1, 2], keepdims=0),
            helper.make_node("Unsqueeze", ["m", "axis"], ["m1"]),
            helper.make_node("Sigmoid", ["m1"], ["p_up"]),
        ],
        "mean_sigmoid",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", LENGTH, n_features])],
        [helper.make_tensor_value_info("p_up", TensorProto.FLOAT, ["n", 1])],
        initializer=[helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> ModelBundle:
    spec = default_spec()
    rng = np.random.default_rng(0)
    train_rows = rng.normal(3.0, 2.0, size=(200, len(spec.names)))
    scaler = FeatureScaler.fit(train_rows, names=spec.names)
    onnx_path = _mean_sigmoid_onnx(tmp_path / "source.onnx", len(spec.names))
    metadata = {
        "pair": "BTC",
        "model_type": "lstm",
        "sequence_length": LENGTH,
        "horizon": 1,
        "beats_baseline": False,
        "test_metrics": {"accuracy": 0.51, "hit_rate": float("nan")},
    }
    return ModelBundle(onnx_path=onnx_path, scaler=scaler, spec=spec, metadata=metadata)


def test_registered_model_name_is_pair_dash_model_type() -> None:
    assert registered_model_name("btc/usdt", "LSTM") == "BTC-lstm"
    assert registered_model_name("ETH", "transformer") == "ETH-transformer"


def test_registered_model_name_refuses_unknown_model_type() -> None:
    with pytest.raises(InvalidNameError, match="allowed model types are lstm, gru"):
        registered_model_name("BTC", "xgboost")


def test_saved_bundle_loads_and_predicts_the_same(bundle: ModelBundle, tmp_path: Path) -> None:
    directory = bundle.save(tmp_path / "bundle")
    loaded = ModelBundle.load(directory)
    rng = np.random.default_rng(1)
    windows = rng.normal(3.0, 2.0, size=(7, LENGTH, len(bundle.spec.names)))

    proba = loaded.predict_proba(windows)

    expected = 1 / (1 + np.exp(-bundle.scaler.transform(windows).mean(axis=(1, 2))))
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    np.testing.assert_allclose(bundle.predict_proba(windows), proba, atol=0)
    assert loaded.spec == bundle.spec
    assert loaded.sequence_length == LENGTH
    assert loaded.horizon == 1
    assert loaded.beats_baseline is False


def test_scaled_windows_skip_the_scaler(bundle: ModelBundle) -> None:
    windows = np.zeros((2, LENGTH, len(bundle.spec.names)))
    np.testing.assert_allclose(bundle.predict_proba(windows, scaled=True), [0.5, 0.5])


def test_windows_from_a_feature_frame_follow_the_spec_order(bundle: ModelBundle) -> None:
    import pandas as pd

    names = list(bundle.spec.names)
    frame = pd.DataFrame(np.arange(8 * len(names), dtype=float).reshape(8, -1), columns=names)
    shuffled = frame[list(reversed(names))]

    windows = bundle.windows(shuffled)

    assert windows.shape == (8 - LENGTH + 1, LENGTH, len(names))
    np.testing.assert_array_equal(windows[0], frame.to_numpy()[:LENGTH])


def test_metadata_nan_is_written_as_strict_json_null(bundle: ModelBundle, tmp_path: Path) -> None:
    directory = bundle.save(tmp_path / "bundle")

    def refuse(token: str) -> float:
        raise AssertionError(f"non-standard JSON token {token}")

    data = json.loads((directory / METADATA_FILE).read_text(), parse_constant=refuse)
    assert data["test_metrics"] == {"accuracy": 0.51, "hit_rate": None}


def test_loading_an_incomplete_bundle_names_the_missing_files(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    directory = bundle.save(tmp_path / "bundle")
    (directory / "scaler.json").unlink()
    with pytest.raises(BundleError, match=r"lacks scaler\.json"):
        ModelBundle.load(directory)


def test_windows_of_the_wrong_shape_are_refused(bundle: ModelBundle) -> None:
    with pytest.raises(BundleError, match=rf"expected windows of shape \(n, {LENGTH}, "):
        bundle.predict_proba(np.zeros((3, LENGTH + 1, len(bundle.spec.names))))


@pytest.mark.slow
def test_bundle_module_does_not_import_tensorflow() -> None:
    code = (
        "import sys; import pipelines.modelbundle, mlproject.scoring, mlproject.gate; "
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _platt(a: float, b: float) -> Calibrator:
    return Calibrator(method="platt", a=a, b=b, rows=100)


def test_saved_bundle_with_a_calibrator_predicts_calibrated_probabilities_after_load(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    calibrated = dataclasses.replace(bundle, calibrator=_platt(0.5, 0.2))
    directory = calibrated.save(tmp_path / "bundle")
    loaded = ModelBundle.load(directory)
    rng = np.random.default_rng(2)
    windows = rng.normal(3.0, 2.0, size=(9, LENGTH, len(bundle.spec.names)))

    proba = loaded.predict_proba(windows)

    raw = 1 / (1 + np.exp(-bundle.scaler.transform(windows).mean(axis=(1, 2))))
    expected = 1 / (1 + np.exp(-(0.5 * np.log(raw / (1 - raw)) + 0.2)))
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(windows, calibrated=False), raw, atol=1e-6)
    assert loaded.calibrator == _platt(0.5, 0.2)
    assert json.loads((directory / CALIBRATION_FILE).read_text())["method"] == "platt"


def test_a_bundle_without_a_calibration_file_loads_as_none_and_predicts_the_raw_output(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    directory = bundle.save(tmp_path / "bundle")
    (directory / CALIBRATION_FILE).unlink()  # as bundles registered before calibration
    loaded = ModelBundle.load(directory)
    windows = np.random.default_rng(3).normal(size=(4, LENGTH, len(bundle.spec.names)))

    assert loaded.calibrator == Calibrator()
    np.testing.assert_array_equal(
        loaded.predict_proba(windows), loaded.predict_proba(windows, calibrated=False)
    )


def test_a_bundle_with_an_invalid_calibration_file_is_refused_naming_it(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    directory = bundle.save(tmp_path / "bundle")
    (directory / CALIBRATION_FILE).write_text('{"format_version": 1, "method": "beta", "rows": 0}')

    with pytest.raises(BundleError, match=r"calibration\.json is invalid: unknown calibration"):
        ModelBundle.load(directory)
