"""The registered version is one pyfunc model: MLflow's own tools answer what the service answers.

One tiny BTC lstm is trained (1 epoch, 8 units, sequence_length 12, newest 400 candles) into a
temporary SQLite tracking store and promoted. Its bundle is then registered again with a
temperature calibrator (T = 0.25), so that the calibration the service and the pyfunc both apply
is never the identity, and that version made production. The same newest candle is asked of the
service (real uvicorn), of `mlflow.pyfunc.load_model`, of `mlflow models predict` and of
`mlflow models serve` (both `--env-manager local`, so nothing is installed or downloaded), and
of the pyfunc loaded in an interpreter where TensorFlow cannot be imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlproject.config import TrainConfig
from mlproject.train import train
from pipelines.calibration import Calibrator
from pipelines.candles.store import CandleStore
from pipelines.lifecycle.registry import set_production
from pipelines.modelbundle import ModelBundle, download_bundle
from pipelines.pyfunc_model import example_candles, log_candle_model, predict_newest
from pipelines.settings import Settings
from tests.conftest import BUNDLED
from tests.mlproject.conftest import mlflow_models_serve
from tests.service.conftest import live_server, make_settings

pytestmark = pytest.mark.slow

URI = "models:/BTC-lstm@production"
MLFLOW = Path(sys.executable).parent / "mlflow"
# Enough candles for the service's exact window (feature lookback + sequence_length) and more.
ROWS = 700
NAME = "BTC-lstm"
TEMPERATURE = Calibrator(method="temperature", temperature=0.25, rows=60)


@dataclass(frozen=True)
class Served:
    settings: Settings
    run_id: str
    candles: pd.DataFrame  # the input: the newest ROWS bundled candles, as the model takes them
    service_probability: float
    raw_probability: float  # the same bundle's answer without its calibrator
    service_body: dict[str, object]

    @property
    def env(self) -> dict[str, str]:
        uri = self.settings.tracking_uri
        # `mlflow models serve` execs `uvicorn` from PATH: the venv's, as when it is activated.
        path = f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("served")
    settings = make_settings(root, None)
    config = TrainConfig(
        pair="BTC", model_type="lstm", epochs=1, sequence_length=12, units=8, layers=1, max_rows=400
    )
    outcome = train(config, settings=settings)
    assert outcome.promotion == "promoted", outcome
    candles = CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED / "none").load("BTC")
    raw = _register_with_temperature(settings, outcome.run_id, candles, root=root)
    with live_server(settings) as server:
        body = server.client.get("/api/predictions/BTC").json()
    assert body["fallback"] is False, body
    frame = example_candles(candles, rows=ROWS)
    assert body["candleTime"] == candles.index[-1].value // 10**6
    probability = float(body["prediction"]["prediction"])
    raw_probability = float(predict_newest(raw, frame)["probability"].iloc[0])
    return Served(settings, outcome.run_id, frame, probability, raw_probability, body)


def _register_with_temperature(
    settings: Settings, run_id: str, candles: pd.DataFrame, *, root: Path
) -> ModelBundle:
    """Register the trained bundle again with TEMPERATURE as its calibrator, as production,
    from a run of its own in the training's experiment; return the bundle without calibrator."""
    client = MlflowClient(settings.tracking_uri)
    trained = download_bundle(client, name=NAME, version="1", dst=root / "trained")
    raw = ModelBundle(
        onnx_path=trained.onnx_path,
        scaler=trained.scaler,
        spec=trained.spec,
        metadata=trained.metadata,
    )
    directory = ModelBundle(
        onnx_path=trained.onnx_path,
        scaler=trained.scaler,
        spec=trained.spec,
        metadata=trained.metadata,
        calibrator=TEMPERATURE,
    ).save(root / "calibrated")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(settings.tracking_uri)
    try:
        experiment = client.get_run(run_id).info.experiment_id
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_candle_model(directory, candles=candles)
    finally:
        mlflow.set_tracking_uri(previous)
    version = client.create_model_version(
        NAME, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    )
    set_production(client, name=NAME, version=str(version.version))
    return raw


def _payload(frame: pd.DataFrame) -> dict[str, object]:
    return {"dataframe_split": frame.to_dict(orient="split", index=False)}


def _check(answer: dict[str, object], served: Served) -> None:
    """One row for the newest candle with the service's probability and derived fields."""
    prediction = served.service_body["prediction"]
    assert isinstance(prediction, dict)
    # The service rounds to 6 decimals; the model answers full precision. Both apply the
    # version's temperature: the raw output is measurably elsewhere.
    assert float(str(answer["probability"])) == pytest.approx(served.service_probability, abs=1e-6)
    assert abs(served.service_probability - served.raw_probability) > 1e-5
    assert answer["prediction"] == prediction["prediction"]
    assert answer["direction"] == prediction["direction"]
    assert answer["signal"] == prediction["signal"]
    assert answer["candle_time"] == served.candles["timestamp"].iloc[-1].replace("Z", "+00:00")


def test_pyfunc_load_model_predicts_the_services_probability(served: Served) -> None:
    # The tracking URI only: the registry follows it unless set, and setting it here would
    # pin it for the tests that run after this one.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(served.settings.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(URI)
        answer = model.predict(served.candles)
    finally:
        mlflow.set_tracking_uri(previous)

    assert len(answer) == 1
    _check(answer.iloc[0].to_dict(), served)


def test_mlflow_models_predict_answers_a_json_file_of_candles(
    served: Served, tmp_path: Path
) -> None:
    source = tmp_path / "candles.json"
    source.write_text(json.dumps(_payload(served.candles)))
    out = tmp_path / "out.json"

    argv = [str(MLFLOW), "models", "predict", "-m", URI, "-i", str(source), "-t", "json"]
    argv += ["-o", str(out), "--env-manager", "local"]
    result = subprocess.run(
        argv,
        env=served.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(out.read_text())["predictions"]
    assert len(answer) == 1
    _check(answer[0], served)


@pytest.fixture(scope="module")
def mlflow_serve(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_models_serve(
        URI, env=served.env, cwd=tmp_path_factory.mktemp("mlflow-serve")
    ) as url:
        yield url


def test_mlflow_models_serve_answers_candles_posted_to_invocations(
    served: Served, mlflow_serve: str
) -> None:
    response = httpx.post(f"{mlflow_serve}/invocations", json=_payload(served.candles), timeout=60)

    assert response.status_code == 200, response.text
    answer = response.json()["predictions"]
    assert len(answer) == 1
    _check(answer[0], served)


def test_mlflow_models_serve_says_how_many_candles_are_needed(
    served: Served, mlflow_serve: str
) -> None:
    response = httpx.post(
        f"{mlflow_serve}/invocations", json=_payload(served.candles.tail(20)), timeout=60
    )

    assert response.status_code == 400
    message = response.json()["message"]
    assert "20 candles give no complete window" in message
    assert "at least 89 candles are needed (77 warm-up + 12 window)" in message


def test_the_registered_pyfunc_predicts_without_tensorflow_or_this_project(
    served: Served, tmp_path: Path
) -> None:
    source = tmp_path / "candles.json"
    source.write_text(json.dumps(_payload(served.candles)))
    # A fresh interpreter: TensorFlow and Keras cannot be imported, and neither can this
    # project's installed packages, so what runs is the code shipped inside the model.
    code = f"""
import json, sys
sys.modules["tensorflow"] = None
sys.modules["keras"] = None
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if p not in ("", {str(Path.cwd())!r})]
import mlflow, pandas as pd
mlflow.set_tracking_uri({served.settings.tracking_uri!r})
mlflow.set_registry_uri({served.settings.tracking_uri!r})
model = mlflow.pyfunc.load_model({URI!r})
payload = json.loads(open({str(source)!r}).read())["dataframe_split"]
answer = model.predict(pd.DataFrame(payload["data"], columns=payload["columns"]))
import pipelines
bad = [m for m in ("tensorflow", "keras", "mlproject", "service") if sys.modules.get(m)]
print(json.dumps({{"row": answer.iloc[0].to_dict(), "pipelines": pipelines.__file__, "bad": bad}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["bad"] == []
    assert "/code/pipelines/" in out["pipelines"]
    assert not out["pipelines"].startswith(str(Path(__file__).resolve().parents[2]))
    _check(out["row"], served)


def test_the_run_names_its_training_candles_as_its_input_dataset(served: Served) -> None:
    client = MlflowClient(served.settings.tracking_uri)
    run = client.get_run(served.run_id)

    assert run.inputs is not None
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "BTC-1h-candles"
    assert json.loads(dataset.source) == {"uri": str(BUNDLED / "BTC-USDT_1h.csv.gz")}
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    first, last = run.data.tags["data_range"].split(" .. ")
    assert run.data.tags["dataset_first_candle"] == first
    assert run.data.tags["dataset_last_candle"] == last
    assert run.data.tags["dataset_digest"] == dataset.digest
    candles = CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED / "none").load("BTC")
    rows = len(candles.loc[pd.Timestamp(first) : pd.Timestamp(last)])
    assert run.data.params["dataset_rows"] == str(rows)
    assert json.loads(str(dataset.profile))["num_rows"] == rows
