"""The registered pyfunc model: candles in, the newest candle's prediction out, on onnxruntime.

A real ONNX graph (sigmoid of the window mean, from test_modelbundle) and real BTC candles; the
logging tests go through a real MLflow tracking store in `tmp_path`, and one loads the logged
model in a fresh interpreter that has neither this project nor TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.calibration import Calibrator
from pipelines.candles.store import CandleStore
from pipelines.features.compute import latest_features
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.lifecycle.signal import SignalRules, served_signal
from pipelines.magnitude import MagnitudeHead
from pipelines.modelbundle import BundleError, ModelBundle, download_bundle
from pipelines.pyfunc_model import (
    PACKAGE,
    exact_candles,
    example_candles,
    log_candle_model,
    minimum_candles,
    predict_newest,
    serving_requirements,
)
from tests.conftest import BUNDLED
from tests.pipelines.test_modelbundle import LENGTH, _mean_sigmoid_onnx


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED / "none").load("BTC")


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    spec = default_spec()
    rng = np.random.default_rng(0)
    scaler = FeatureScaler.fit(rng.normal(0.0, 1.0, size=(200, len(spec.names))), names=spec.names)
    onnx_path = _mean_sigmoid_onnx(tmp_path / "source.onnx", len(spec.names))
    metadata = {
        "pair": "BTC",
        "model_type": "lstm",
        "sequence_length": LENGTH,
        "horizon": 1,
        "beats_baseline": True,
        "buy_threshold": 0.5,
        "sell_threshold": 0.4,
    }
    bundle = ModelBundle(onnx_path=onnx_path, scaler=scaler, spec=spec, metadata=metadata)
    return bundle.save(tmp_path / "files")


def test_answer_is_the_probability_of_the_newest_window_with_the_services_fields(
    bundle_dir: Path, candles: pd.DataFrame
) -> None:
    bundle = ModelBundle.load(bundle_dir)
    frame = example_candles(candles, rows=exact_candles(bundle))

    answer = predict_newest(bundle, frame)

    rows = latest_features(candles, rows=LENGTH, spec=bundle.spec).to_numpy()
    expected = float(bundle.predict_proba(rows[np.newaxis])[0])
    assert len(answer) == 1
    row = answer.iloc[0]
    assert row["probability"] == pytest.approx(expected, abs=1e-12)
    assert row["candle_time"] == candles.index[-1].isoformat()
    assert row["direction"] == ("up" if expected >= 0.5 else "down")
    assert row["signal"] == ("BUY" if expected >= 0.5 else "SELL" if expected <= 0.4 else "HOLD")
    assert row["confidence"] == pytest.approx(max(expected, 1 - expected), abs=1e-6)
    assert row["modelType"] == "lstm"
    assert not row["unproven"]


def test_epoch_millisecond_timestamps_give_the_same_answer(
    bundle_dir: Path, candles: pd.DataFrame
) -> None:
    bundle = ModelBundle.load(bundle_dir)
    frame = example_candles(candles, rows=exact_candles(bundle))
    millis = frame.assign(
        timestamp=[int(pd.Timestamp(t).timestamp() * 1000) for t in frame["timestamp"]]
    )
    assert millis["timestamp"].iloc[-1] == candles.index[-1].value // 10**6

    pd.testing.assert_frame_equal(predict_newest(bundle, millis), predict_newest(bundle, frame))


def test_too_few_candles_are_refused_with_the_number_needed(
    bundle_dir: Path, candles: pd.DataFrame
) -> None:
    bundle = ModelBundle.load(bundle_dir)
    needed = minimum_candles(bundle)
    assert needed == bundle.spec.warmup + LENGTH
    frame = example_candles(candles, rows=needed - 1)

    with pytest.raises(BundleError, match=rf"{needed - 1} candles .* at least {needed} candles"):
        predict_newest(bundle, frame)
    assert len(predict_newest(bundle, example_candles(candles, rows=needed))) == 1


def test_a_missing_candle_column_is_named(bundle_dir: Path, candles: pd.DataFrame) -> None:
    bundle = ModelBundle.load(bundle_dir)
    frame = example_candles(candles, rows=exact_candles(bundle)).drop(columns=["volume"])

    with pytest.raises(BundleError, match=r"lack column.*volume; expected timestamp, open"):
        predict_newest(bundle, frame)


def test_requirements_are_pinned_and_name_no_tensorflow() -> None:
    pins = serving_requirements()

    assert {p.split("==")[0] for p in pins} >= {"onnxruntime", "numpy", "pandas", "ta-lib"}
    assert all("==" in p for p in pins)
    assert not any(p.startswith(("tensorflow", "keras")) for p in pins)


def test_logged_model_loads_as_pyfunc_and_its_bundle_downloads(
    bundle_dir: Path, candles: pd.DataFrame, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("pyfunc", artifact_location=(tmp_path / "a").as_uri())
    # The tracking URI only: the registry follows it unless set, and setting it here would
    # pin it for the tests that run after this one.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            info = log_candle_model(bundle_dir, candles=candles)
        client.create_registered_model("BTC-lstm")
        version = client.create_model_version("BTC-lstm", source=info.model_uri)
        frame = example_candles(candles, rows=exact_candles(ModelBundle.load(bundle_dir)))
        loaded = mlflow.pyfunc.load_model(f"models:/BTC-lstm/{version.version}")
        answer = loaded.predict(frame)
    finally:
        mlflow.set_tracking_uri(previous)

    downloaded = download_bundle(client, name="BTC-lstm", version="1", dst=tmp_path / "copy")
    expected = predict_newest(downloaded, frame)
    assert answer["probability"].iloc[0] == pytest.approx(expected["probability"].iloc[0])
    assert downloaded.onnx_path.read_bytes() == (bundle_dir / "model.onnx").read_bytes()
    location = client.get_logged_model(info.model_id).artifact_location
    code = Path(mlflow.artifacts.download_artifacts(f"{location}/code", dst_path=str(tmp_path)))
    # The package ships whole (its statistics are imported, not copied), less Python's caches.
    shipped = {p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file()}
    package = {
        f"pipelines/{p.relative_to(PACKAGE).as_posix()}"
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert shipped == package
    assert {"pipelines/pyfunc_model.py", "pipelines/lifecycle/scores.py"} <= shipped


# Run in a fresh interpreter: TensorFlow, Keras and SQLAlchemy cannot be imported, nor this
# project from its checkout, so the model runs on the package shipped in its code/ folder only.
_ALONE = """
import json, sys
for blocked in ("tensorflow", "keras", "sqlalchemy"):
    sys.modules[blocked] = None
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if p not in ("", {root!r})]
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model({model!r})
payload = json.loads(open({candles!r}).read())
frame = pd.DataFrame(payload["data"], columns=payload["columns"])
answer = model.predict(frame)
import pipelines
print(json.dumps({{
    "probability": float(answer["probability"].iloc[0]),
    "pipelines": pipelines.__file__,
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("pipelines", "mlproject")),
}}))
"""


def test_the_logged_model_runs_its_shipped_package_alone_with_its_temperature(
    bundle_dir: Path, candles: pd.DataFrame, tmp_path: Path
) -> None:
    bundle = ModelBundle.load(bundle_dir)
    calibrated = ModelBundle(
        onnx_path=bundle.onnx_path,
        scaler=bundle.scaler,
        spec=bundle.spec,
        metadata=bundle.metadata,
        calibrator=Calibrator(method="temperature", temperature=2.5, rows=300),
    ).save(tmp_path / "calibrated")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("alone", artifact_location=(tmp_path / "a").as_uri())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            info = log_candle_model(calibrated, candles=candles)
        model = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "m"))
    finally:
        mlflow.set_tracking_uri(previous)
    frame = example_candles(candles, rows=exact_candles(bundle))
    source = tmp_path / "candles.json"
    source.write_text(json.dumps(frame.to_dict(orient="split", index=False)))
    root = str(Path(__file__).resolve().parents[2])

    result = subprocess.run(
        [sys.executable, "-c", _ALONE.format(root=root, model=model, candles=str(source))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["pipelines"].startswith(str(Path(model) / "code" / "pipelines"))
    # What the model runs imports no settings, store, tracking or training module.
    heavy = {"pipelines.settings", "pipelines.tracking", "pipelines.db", "pipelines.candles.store"}
    assert not heavy & set(out["modules"])
    assert not any(m.startswith("mlproject") for m in out["modules"])
    assert "pipelines.lifecycle.scores" in out["modules"]
    # The service's probability (the bundle's, calibrated) and not the raw ONNX output.
    served = float(predict_newest(ModelBundle.load(calibrated), frame)["probability"].iloc[0])
    raw = float(predict_newest(bundle, frame)["probability"].iloc[0])
    assert out["probability"] == pytest.approx(served, abs=1e-12)
    assert abs(served - raw) > 1e-3


def test_the_loaded_model_reports_bad_input_as_mlflow_s_invalid_parameter(
    bundle_dir: Path, candles: pd.DataFrame
) -> None:
    from mlflow.exceptions import MlflowException

    from pipelines.pyfunc_model import CandleModel

    model = CandleModel()
    model.bundle = ModelBundle.load(bundle_dir)

    with pytest.raises(MlflowException, match=r"at least \d+ candles are needed") as caught:
        model.predict(None, example_candles(candles, rows=10))  # type: ignore[arg-type]
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.fixture
def gated(bundle_dir: Path, candles: pd.DataFrame) -> tuple[ModelBundle, pd.DataFrame, float]:
    """A bundle with a magnitude head (a HAR of `ret_1` inside the window), its buy threshold
    just below the newest candle's probability; with the candles and that candle's move."""
    plain = ModelBundle.load(bundle_dir)
    names = plain.spec.names
    frame = example_candles(candles, rows=exact_candles(plain))
    rows = latest_features(candles, rows=LENGTH, spec=plain.spec).to_numpy()[np.newaxis]
    p = float(plain.predict_proba(rows)[0])
    head = MagnitudeHead(
        names=names,
        last_step=("hour_sin",),
        window=("ret_1",),
        spans=(1, LENGTH),
        center=np.array([-6.0, -6.0]),
        scale=np.array([1.0, 1.0]),
        coef=np.array([0.2, 0.5, 0.8]),
        intercept=0.0,
        threshold=0.002,
        horizon=1,
    )
    raw_move = head.proba(rows, plain.scaler.transform(rows[:, -1, :]))[0]
    # Shifted so the newest move lies well below 0.5, the default ML_MOVE_THRESHOLD.
    head = dataclasses.replace(
        head, intercept=float(np.log(0.3 / 0.7) - np.log(raw_move / (1 - raw_move)))
    )
    metadata = {**plain.metadata, "buy_threshold": round(p - 0.01, 4), "sell_threshold": 0.1}
    saved = dataclasses.replace(plain, metadata=metadata, magnitude=head).save(
        bundle_dir.parent / "gated"
    )
    bundle = ModelBundle.load(saved)
    move = bundle.move_proba(rows)
    assert move is not None
    assert float(bundle.predict_proba(rows)[0]) == p > metadata["buy_threshold"]
    return bundle, frame, float(move[0])


@pytest.mark.parametrize(
    ("gate", "above", "signal"),
    [
        pytest.param({"move_gate": True}, 0.05, "HOLD", id="gate on, move below: held"),
        pytest.param({"move_gate": False}, 0.05, "BUY", id="gate off: not held"),
        pytest.param({"move_gate": True}, -0.05, "BUY", id="gate on, move above: not held"),
        pytest.param({}, None, "HOLD", id="older metadata: gate on at 0.5"),
    ],
)
def test_the_signal_is_held_for_a_small_move_as_the_metadata_recorded_the_gate(
    gated: tuple[ModelBundle, pd.DataFrame, float],
    gate: dict[str, bool],
    above: float | None,
    signal: str,
) -> None:
    bundle, frame, move = gated
    assert 0.2 < move < 0.4  # below the default threshold, 0.5
    metadata = {
        k: v for k, v in bundle.metadata.items() if k not in ("move_gate", "move_threshold")
    }
    if above is not None:
        metadata["move_threshold"] = move + above
    metadata.update(gate)

    answer = predict_newest(dataclasses.replace(bundle, metadata=metadata), frame).iloc[0]

    assert answer["signal"] == signal
    assert answer["move"] == move  # full precision, not the rounded display value
    assert answer["probability"] > metadata["buy_threshold"]  # the thresholds alone say BUY
    rules = SignalRules(
        buy_threshold=metadata["buy_threshold"],
        sell_threshold=metadata["sell_threshold"],
        **{k: metadata[k] for k in ("move_gate", "move_threshold") if k in metadata},
    )
    assert answer["signal"] == served_signal(answer["probability"], rules=rules, move=move).signal


def test_a_version_without_a_head_is_not_held_for_its_move(
    gated: tuple[ModelBundle, pd.DataFrame, float],
) -> None:
    bundle, frame, _ = gated

    answer = predict_newest(dataclasses.replace(bundle, magnitude=None), frame).iloc[0]

    assert answer["signal"] == "BUY"
    assert np.isnan(answer["move"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"move_gate": "false"}, "move_gate must be true or false, got 'false'"),
        ({"move_threshold": 1.5}, r"invalid signal rules: the move threshold must be within"),
    ],
)
def test_a_malformed_gate_in_the_metadata_is_refused_naming_it(
    gated: tuple[ModelBundle, pd.DataFrame, float], change: dict[str, object], message: str
) -> None:
    bundle, frame, _ = gated

    with pytest.raises(BundleError, match=message):
        predict_newest(dataclasses.replace(bundle, metadata={**bundle.metadata, **change}), frame)
