"""The tabular model types through the real `train` entry point, served like the LSTM.

Each of lightgbm, logistic, blend and pooled is trained by `mlflow run . -e train -P
model_type=...` (a child process, tiny data) into one SQLite tracking store and promoted as its
pair's first version. The service (real uvicorn) answers `GET /api/predictions/BTC?model=...`
for each, and `mlflow models serve` of each registered version answers the same probability
for the same candles, to 1e-6. A pooled model is also trained where one configured pair has
no candle file at all and another only a short, gappy history: both serve.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlproject.config import TrainConfig
from mlproject.train import train
from pipelines.candles.store import CandleStore
from pipelines.features.compute import compute_features
from pipelines.features.references import store_loader, with_references
from pipelines.features.spec import feature_set_of
from pipelines.modelbundle import download_bundle
from pipelines.pyfunc_model import example_candles
from pipelines.settings import PROJECT_ROOT, TABULAR_TYPES, Settings
from tests.conftest import BUNDLED
from tests.mlproject.conftest import mlflow_models_serve
from tests.service.conftest import live_server, make_settings

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).parent / "mlflow"
ROWS = 700  # candles posted to `mlflow models serve`: the window and its warm-up, and more
SMALL = {"pair": "BTC", "sequence_length": "12", "max_rows": "1500"}


@dataclass(frozen=True)
class Trained:
    settings: Settings
    root: Path

    @property
    def env(self) -> dict[str, str]:
        uri = self.settings.tracking_uri
        path = f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}


def _mlflow_run(trained: Trained, model_type: str) -> None:
    environment = {
        **trained.env,
        "ML_ARTIFACT_ROOT": str(trained.settings.artifact_root),
        "ML_DATA_DIR": str(trained.settings.data_dir),
    }
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "train"]
    for key, value in {**SMALL, "model_type": model_type}.items():
        command += ["-P", f"{key}={value}"]
    command += ["--env-manager", "local", "--experiment-name", "tabular-served"]
    result = subprocess.run(
        command, cwd=trained.root, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("tabular-served")
    settings = make_settings(root, None, enabled_models=list(TABULAR_TYPES))
    result = Trained(settings, root)
    for model_type in TABULAR_TYPES:
        _mlflow_run(result, model_type)
    return result


@pytest.fixture(scope="module")
def service_answers(trained: Trained) -> dict[str, dict[str, object]]:
    with live_server(trained.settings) as server:
        return {
            kind: server.client.get(f"/api/predictions/BTC?model={kind}").json()
            for kind in TABULAR_TYPES
        }


def test_every_tabular_type_is_registered_and_promoted_by_the_entry_point(
    trained: Trained,
) -> None:
    client = MlflowClient(trained.settings.tracking_uri)
    for kind in TABULAR_TYPES:
        version = client.get_model_version_by_alias(f"BTC-{kind}", "production")
        assert version.tags["model_type"] == kind
        bundle = download_bundle(
            client, name=f"BTC-{kind}", version=version.version, dst=trained.root / f"b-{kind}"
        )
        assert bundle.head is not None
        assert not (bundle.directory / "model.onnx").exists()
        assert bundle.metadata["model_type"] == kind
        # Unless ML_FEATURE_SET says otherwise, each type trains on its evaluated feature set.
        assert feature_set_of(bundle.spec) == ("cross" if kind == "lightgbm" else "default")
    run = client.search_runs(
        [client.get_experiment_by_name("tabular-served").experiment_id],  # type: ignore[union-attr]
        filter_string="tags.model_type = 'blend'",
    )[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "importance")}
    assert "importance/permutation_importance.png" in artifacts
    assert "importance/permutation_importance.csv" in artifacts


def test_the_service_serves_each_type_and_they_differ(
    service_answers: dict[str, dict[str, object]],
) -> None:
    probabilities = {}
    for kind, body in service_answers.items():
        assert body["fallback"] is False, body
        prediction = body["prediction"]
        assert isinstance(prediction, dict)
        assert prediction["modelType"] == kind, body
        probabilities[kind] = float(prediction["prediction"])
    # Four models fitted differently: not one answer passed off as four.
    assert len({round(p, 6) for p in probabilities.values()}) == len(TABULAR_TYPES)


@pytest.fixture(scope="module")
def served_by_mlflow(trained: Trained) -> dict[str, float]:
    store = CandleStore(bundled_dir=BUNDLED, data_dir=trained.settings.data_dir)
    client = MlflowClient(trained.settings.tracking_uri)
    answers: dict[str, float] = {}
    for kind in TABULAR_TYPES:
        bundle = download_bundle(
            client, name=f"BTC-{kind}", version="1", dst=trained.root / f"served-{kind}"
        )
        # A cross-feature model (lightgbm's evaluated set) also reads the other pairs' closes.
        candles = with_references(
            store.load("BTC"), pair="BTC", spec=bundle.spec, load=store_loader(store, "1h")
        )
        frame = example_candles(candles, rows=ROWS, bundle=bundle)
        payload = {"dataframe_split": frame.to_dict(orient="split", index=False)}
        with mlflow_models_serve(
            f"models:/BTC-{kind}@production", env=trained.env, cwd=trained.root
        ) as url:
            response = httpx.post(f"{url}/invocations", json=payload, timeout=60)
            assert response.status_code == 200, response.text
            (row,) = response.json()["predictions"]
            answers[kind] = float(row["probability"])
    return answers


def test_mlflow_models_serve_answers_the_services_probability(
    service_answers: dict[str, dict[str, object]], served_by_mlflow: dict[str, float]
) -> None:
    for kind, body in service_answers.items():
        prediction = body["prediction"]
        assert isinstance(prediction, dict)
        assert served_by_mlflow[kind] == pytest.approx(float(prediction["prediction"]), abs=1e-6)


def test_a_pooled_model_trains_and_serves_when_pairs_lack_candles(tmp_path: Path) -> None:
    bundled = tmp_path / "ohlcv"
    bundled.mkdir()
    for source in BUNDLED.iterdir():
        if source.is_file() and not source.name.startswith(("XMR-", "RVN-")):
            shutil.copy(source, bundled / source.name)
    # RVN: only its newest 1,500 candles, with 40 of them missing in the middle.
    store = CandleStore(bundled_dir=BUNDLED, data_dir=tmp_path / "none")
    rvn = store.load("RVN").iloc[-1500:]
    rvn = pd.concat([rvn.iloc[:700], rvn.iloc[740:]])
    _write_like_bundled(rvn, BUNDLED / store.bundled_path("RVN", "1h").name, bundled)
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        bundled_data_dir=bundled,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "mlruns",
        pairs=["BTC", "ETH", "XMR", "RVN"],
    )
    client = MlflowClient(settings.tracking_uri)

    answers = {}
    for pair in ("BTC", "RVN"):
        outcome = train(
            TrainConfig(pair=pair, model_type="pooled", sequence_length=12, max_rows=1500),
            settings=settings,
        )
        assert outcome.promotion == "promoted", outcome
        bundle = download_bundle(
            client, name=f"{pair}-pooled", version="1", dst=tmp_path / f"bundle-{pair}"
        )
        assert bundle.head is not None
        assert bundle.head.to_dict()["pairs"] == ["BTC", "ETH", "XMR", "RVN"]
        assert bundle.head.to_dict()["pair_index"] == settings.pairs.index(pair)
        candles = CandleStore(bundled_dir=bundled, data_dir=tmp_path / "data").load(pair)
        windows = bundle.windows(compute_features(candles, spec=bundle.spec).iloc[-40:])
        answers[pair] = bundle.predict_proba(windows)
        assert np.isfinite(answers[pair]).all()
    assert not np.allclose(answers["BTC"][-5:], answers["RVN"][-5:])


def _write_like_bundled(candles: pd.DataFrame, original: Path, folder: Path) -> None:
    """`candles` written in the bundled file's own columns, under its name in `folder`."""
    columns = list(pd.read_csv(original, nrows=1).columns)
    frame = candles.reset_index()
    frame = frame.rename(columns={frame.columns[0]: columns[0]})
    frame[columns[0]] = pd.DatetimeIndex(candles.index).strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.loc[:, columns].to_csv(folder / original.name, index=False)
