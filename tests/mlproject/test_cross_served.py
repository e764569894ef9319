"""A cross-pair model through the real `train` entry point, served, and its references' timing.

`mlflow run . -e train -P pair=ETH -P model_type=lightgbm -P feature_set=cross` (a child
process, tiny data) registers and promotes ETH's version. The service (real uvicorn) serves it
from the candle store, attaching BTC's and the market's closes as of each row; `mlflow models
serve` of the same version answers the same probability for the same candles sent with their
`ref_close_<PAIR>` columns, and refuses candles without them, naming the columns. When ETH's
newest candle arrives before BTC's, the answer reads BTC as of the hour before; once BTC's
candle arrives the service answers again, with what the training would compute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.candles.store import CandleStore
from pipelines.features.references import attach_references, store_loader
from pipelines.features.spec import reference_pairs
from pipelines.modelbundle import download_bundle
from pipelines.pyfunc_model import exact_candles, example_candles, predict_newest
from pipelines.settings import PROJECT_ROOT, Settings
from tests.mlproject.conftest import mlflow_models_serve
from tests.service.conftest import append_candle, live_server, make_settings

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).parent / "mlflow"
PAIRS = ["BTC", "ETH", "XMR", "RVN"]


def _env(settings: Settings) -> dict[str, str]:
    uri = settings.tracking_uri
    path = f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {
        **os.environ,
        "PATH": path,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        "ML_ARTIFACT_ROOT": str(settings.artifact_root),
        "ML_DATA_DIR": str(settings.data_dir),
        "ML_PAIRS": ",".join(PAIRS),
    }


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("cross-served")
    settings = make_settings(
        root, None, enabled_models=["lightgbm"], pairs=PAIRS, feature_set="cross"
    )
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "train"]
    parameters = {
        "pair": "ETH",
        "model_type": "lightgbm",
        "feature_set": "cross",
        "sequence_length": "12",
        "max_rows": "1500",
    }
    for key, value in parameters.items():
        command += ["-P", f"{key}={value}"]
    command += ["--env-manager", "local", "--experiment-name", "cross-served"]
    result = subprocess.run(
        command, cwd=root, env=_env(settings), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return settings


def _candles(settings: Settings, pair: str, references: tuple[str, ...]) -> pd.DataFrame:
    store = CandleStore.from_settings(settings)
    return attach_references(
        store.load(pair, settings.timeframe),
        pair=pair,
        references=references,
        load=store_loader(store, settings.timeframe),
    )


def test_cross_features_are_served_alike_by_the_service_and_mlflow_models_serve(
    settings: Settings, tmp_path: Path
) -> None:
    client = MlflowClient(settings.tracking_uri)
    version = client.get_model_version_by_alias("ETH-lightgbm", "production")
    bundle = download_bundle(client, name="ETH-lightgbm", version=version.version, dst=tmp_path)
    references = reference_pairs(bundle.spec)
    assert references == ("BTC", "ETH", "XMR", "RVN")
    assert "xbtc_ret_1" in bundle.spec.names
    assert bundle.spec.params["feature_set"] == "cross"

    with live_server(settings) as server:
        body = server.client.get("/api/predictions/ETH?model=lightgbm").json()
    assert body["fallback"] is False, body
    served = float(body["prediction"]["prediction"])

    candles = _candles(settings, "ETH", references)
    frame = example_candles(candles, rows=exact_candles(bundle), bundle=bundle)
    assert [c for c in frame.columns if c.startswith("ref_close_")] == [
        f"ref_close_{p}" for p in references
    ]
    assert float(predict_newest(bundle, frame)["probability"].iloc[0]) == pytest.approx(
        served, abs=1e-6
    )
    env = _env(settings)
    with mlflow_models_serve(
        "models:/ETH-lightgbm@production", env=env, cwd=settings.data_dir.parent
    ) as url:
        payload = {"dataframe_split": frame.to_dict(orient="split", index=False)}
        response = httpx.post(f"{url}/invocations", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        assert float(response.json()["predictions"][0]["probability"]) == pytest.approx(
            served, abs=1e-6
        )
        bare = frame.drop(columns=["ref_close_BTC", "ref_close_XMR"])
        payload = {"dataframe_split": bare.to_dict(orient="split", index=False)}
        refused = httpx.post(f"{url}/invocations", json=payload, timeout=60)
        assert refused.status_code == 400
        # MLflow's schema check names them first; the model's own check names them too.
        assert "ref_close_BTC" in refused.text
        assert "ref_close_XMR" in refused.text
    with pytest.raises(ValueError, match="lack column\\(s\\) ref_close_BTC, ref_close_XMR"):
        predict_newest(bundle, bare)


def test_a_reference_candle_that_arrives_later_changes_the_served_answer(
    settings: Settings, tmp_path: Path
) -> None:
    client = MlflowClient(settings.tracking_uri)
    bundle = download_bundle(client, name="ETH-lightgbm", version="1", dst=tmp_path)
    references = reference_pairs(bundle.spec)
    with live_server(settings) as server:
        append_candle(settings, "ETH", close_factor=1.002)
        early = server.client.get("/api/predictions/ETH?model=lightgbm").json()
        assert early["fallback"] is False, early
        # BTC's candle of the same hour arrives, a big move: the market moved with it.
        append_candle(settings, "BTC", close_factor=1.04)
        late = server.client.get("/api/predictions/ETH?model=lightgbm").json()
    assert late["candleTime"] == early["candleTime"]
    assert late["prediction"]["prediction"] != early["prediction"]["prediction"]
    # The late answer is what the training's features give on the same candles.
    candles = _candles(settings, "ETH", references)
    frame = example_candles(candles, rows=exact_candles(bundle), bundle=bundle)
    expected = float(predict_newest(bundle, frame)["probability"].iloc[0])
    assert float(late["prediction"]["prediction"]) == pytest.approx(expected, abs=1e-6)
