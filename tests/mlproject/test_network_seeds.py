"""A network trained on k seeds is served as one model: the mean of its seeds' probabilities."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from mlproject.config import TrainConfig
from mlproject.train import KERAS_ARTIFACT_PATH, KERAS_MODEL_FILE, train
from pipelines.modelbundle import download_bundle
from tests.conftest import stores_under

pytestmark = pytest.mark.slow


def test_two_seeds_are_served_as_the_mean_of_their_probabilities(tmp_path: Path) -> None:
    settings = stores_under(tmp_path, network_seeds=2)
    config = TrainConfig(pair="BTC", epochs=2, sequence_length=12, units=4, layers=1, max_rows=400)

    outcome = train(config, settings=settings)

    client = MlflowClient(settings.tracking_uri)
    assert outcome.version is not None
    bundle = download_bundle(client, name="BTC-lstm", version=outcome.version, dst=tmp_path / "b")
    local = download_artifacts(
        run_id=outcome.run_id,
        artifact_path=f"{KERAS_ARTIFACT_PATH}/{KERAS_MODEL_FILE}",
        dst_path=str(tmp_path / "k"),
        tracking_uri=settings.tracking_uri,
    )
    averaged = keras.saving.load_model(local)
    members = [layer for layer in averaged.layers if layer.name.startswith("member_")]
    assert [m.name for m in members] == ["member_0", "member_1"]
    windows = np.random.default_rng(0).normal(size=(16, 12, len(bundle.spec.names)))
    scaled = windows.astype(np.float32)
    each = [np.asarray(m.predict(scaled, verbose=0)).reshape(-1) for m in members]
    served = bundle.predict_proba(scaled, scaled=True, calibrated=False)

    assert np.abs(each[0] - each[1]).max() > 1e-4  # two seeds, two different networks
    np.testing.assert_allclose(served, (each[0] + each[1]) / 2, atol=1e-5)
