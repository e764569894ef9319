"""The promotion gate on real registry versions whose ONNX bundles predict known probabilities.

Each version's run carries a real bundle whose ONNX graph outputs a constant probability, so
which version is better on the newest held-out rows is known in advance, and the gate's
decision can be checked without training anything.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper

from mlproject.gate import apply_gate
from mlproject.tracking import client_for, ensure_experiment
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.modelbundle import ModelBundle
from pipelines.pyfunc_model import log_candle_model
from pipelines.settings import Settings
from pipelines.tracking import PRODUCTION_STAGE

NAME = "BTC-lstm"
LENGTH = 8
TEST_ROWS = 400


def _constant_onnx(path: Path, probability: float, n_features: int) -> Path:
    """p = sigmoid(0 * mean(window) + logit(probability)) for every window."""
    logit = math.log(probability / (1 - probability))
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["features"], ["m"], axes=[1, 2], keepdims=0),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["z", "bias"], ["b"]),
            helper.make_node("Unsqueeze", ["b", "axis"], ["b1"]),
            helper.make_node("Sigmoid", ["b1"], ["p_up"]),
        ],
        "constant",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", LENGTH, n_features])],
        [helper.make_tensor_value_info("p_up", TensorProto.FLOAT, ["n", 1])],
        initializer=[
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("bias", TensorProto.FLOAT, [], [logit]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class Registry:
    """Registers versions whose runs carry constant-probability bundles."""

    def __init__(self, settings: Settings, candles: pd.DataFrame, tmp: Path) -> None:
        self.settings = settings
        self.candles = candles
        self.tmp = tmp
        self.client: MlflowClient = client_for(settings)
        self.experiment = ensure_experiment(self.client, name="gate", settings=settings)
        # The newest TEST_ROWS rows that have a label (horizon 1).
        index = candles.index
        self.test_start, self.test_end = index[-1 - TEST_ROWS], index[-2]
        self.count = 0

    def version(
        self,
        probability: float,
        *,
        beats_baseline: bool = True,
        fit_end: pd.Timestamp | None = None,
        spec_version: str | None = None,
    ) -> str:
        self.count += 1
        spec = default_spec()
        rng = np.random.default_rng(self.count)
        scaler = FeatureScaler.fit(rng.normal(size=(50, len(spec.names))), names=spec.names)
        directory = self.tmp / f"bundle{self.count}"
        directory.mkdir()
        onnx_path = _constant_onnx(directory / "model.onnx", probability, len(spec.names))
        metadata = {
            "pair": "BTC",
            "model_type": "lstm",
            "sequence_length": LENGTH,
            "horizon": 1,
            "beats_baseline": beats_baseline,
            "test_window": {
                "start": self.test_start.isoformat(),
                "end": self.test_end.isoformat(),
                "rows": TEST_ROWS,
            },
            "fit_end": (fit_end or self.test_start - pd.Timedelta(hours=100)).isoformat(),
            "test_metrics": {"log_loss": 0.69},
            "baseline_metrics": {"majority": {"log_loss": 0.70}},
            "strongest_baseline": "majority",
            "buy_threshold": 0.55,
            "sell_threshold": 0.45,
        }
        ModelBundle(onnx_path=onnx_path, scaler=scaler, spec=spec, metadata=metadata).save(
            directory
        )
        with mlflow.start_run(experiment_id=self.experiment) as run:
            info = log_candle_model(directory, candles=self.candles)  # as a training logs it
        if spec_version is not None:
            # A version trained by other feature code: its logged spec names another version.
            location = self.client.get_logged_model(info.model_id).artifact_location
            logged = Path(urllib.parse.urlparse(location).path) / "artifacts" / "feature_spec.json"
            replace(spec, version=spec_version).save(logged)
        if not self.client.search_registered_models(f"name = '{NAME}'"):
            self.client.create_registered_model(NAME)
        created = self.client.create_model_version(
            NAME, source=info.model_uri, run_id=run.info.run_id
        )
        return str(created.version)

    def gate(self, version: str, **overrides: object):  # type: ignore[no-untyped-def]
        settings = self.settings.model_copy(update=overrides)
        return apply_gate(
            self.client, name=NAME, version=version, candles=self.candles, settings=settings
        )

    def production(self) -> str:
        return str(self.client.get_model_version_by_alias(NAME, "production").version)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(NAME, version).tags)


@pytest.fixture
def registry(settings: Settings, btc_candles: pd.DataFrame, tmp_path: Path) -> Registry:
    return Registry(settings, btc_candles, tmp_path)


def test_first_version_becomes_production_and_mirrors_the_stage(registry: Registry) -> None:
    first = registry.version(0.5)

    decision = registry.gate(first)

    assert decision.promoted
    assert not decision.unproven
    assert registry.production() == first
    assert registry.client.get_model_version(NAME, first).current_stage == PRODUCTION_STAGE
    assert registry.tags(first)["tbml.promotion"] == "promoted"
    assert registry.tags(first)["tbml.unproven"] == "false"
    assert "no production version yet" in registry.tags(first)["tbml.promotion_reason"]


def test_better_challenger_replaces_production_and_archives_it(registry: Registry) -> None:
    old = registry.version(0.9)
    registry.gate(old)
    new = registry.version(0.5)

    decision = registry.gate(new)

    assert decision.promoted
    assert decision.incumbent_version == old
    assert decision.rows == TEST_ROWS
    assert decision.challenger == pytest.approx(math.log(2), abs=1e-6)
    assert decision.incumbent is not None
    assert decision.incumbent > decision.challenger
    assert registry.production() == new
    assert registry.client.get_model_version(NAME, old).current_stage == "Archived"


def test_worse_challenger_is_rejected_and_production_is_unchanged(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)
    new = registry.version(0.8)

    decision = registry.gate(new)

    assert not decision.promoted
    assert registry.production() == old
    tags = registry.tags(new)
    assert tags["tbml.promotion"] == "rejected"
    assert f"worse than production version {old}" in tags["tbml.promotion_reason"]
    assert f"same {TEST_ROWS} newest held-out rows" in tags["tbml.promotion_reason"]
    assert "tbml.unproven" not in tags


def test_a_tie_promotes_unless_the_margin_asks_for_an_improvement(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)

    assert not registry.gate(registry.version(0.5), promotion_margin=0.01).promoted
    assert registry.gate(registry.version(0.5)).promoted


def test_the_promotion_metric_is_a_setting(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)
    # Constant probabilities all rank alike: ROC AUC 0.5 either way, a tie that promotes.
    decision = registry.gate(registry.version(0.8), promotion_metric="roc_auc")
    assert decision.metric == "roc_auc"
    assert decision.promoted


def test_unproven_first_version_is_promoted_and_marked(registry: Registry) -> None:
    first = registry.version(0.5, beats_baseline=False)

    decision = registry.gate(first)

    assert decision.promoted
    assert decision.unproven
    assert registry.tags(first)["tbml.unproven"] == "true"
    assert (
        "served as HOLD unless ML_SERVE_UNPROVEN" in registry.tags(first)["tbml.promotion_reason"]
    )


def test_rows_the_production_version_trained_on_are_left_out(registry: Registry) -> None:
    seen_until = registry.test_start + pd.Timedelta(hours=150)
    old = registry.version(0.6, fit_end=seen_until)
    registry.gate(old)
    new = registry.version(0.5)

    decision = registry.gate(new)

    index = registry.candles.index
    window = index[(index >= registry.test_start) & (index <= registry.test_end)]
    positions = index.get_indexer(window)
    unseen = int((index[positions - LENGTH + 1] > seen_until).sum())
    assert 100 <= unseen < TEST_ROWS
    assert decision.rows == unseen
    assert "left out" in decision.reason


def test_production_version_this_code_cannot_score_is_replaced(registry: Registry) -> None:
    old = registry.version(0.5, spec_version="000000000000")
    registry.gate(old)
    new = registry.version(0.9)

    decision = registry.gate(new)

    assert decision.promoted
    assert "cannot be scored by this code" in decision.reason
    assert registry.production() == new
