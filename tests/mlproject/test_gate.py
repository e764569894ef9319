"""The promotion gate on real registry versions whose ONNX bundles predict known probabilities.

Each version's run carries a real bundle whose ONNX graph outputs a constant probability (or one
that wobbles a little around it, with the window's features), so which version is better on the
newest held-out rows, and by how much more than noise, is known in advance, and the gate's
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

from mlproject.gate import GateDecision, apply_gate
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


def _constant_onnx(path: Path, probability: float, n_features: int, wobble: float = 0.0) -> Path:
    """p = sigmoid(wobble * sin(mean(window)) + logit(probability)) for every window.

    With wobble 0 the probability is constant; otherwise it moves with the features in a way
    that has nothing to do with the next candle: noise around `probability`.
    """
    logit = math.log(probability / (1 - probability))
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["features"], ["m"], axes=[1, 2], keepdims=0),
            helper.make_node("Sin", ["m"], ["s"]),
            helper.make_node("Mul", ["s", "wobble"], ["z"]),
            helper.make_node("Add", ["z", "bias"], ["b"]),
            helper.make_node("Unsqueeze", ["b", "axis"], ["b1"]),
            helper.make_node("Sigmoid", ["b1"], ["p_up"]),
        ],
        "constant",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", LENGTH, n_features])],
        [helper.make_tensor_value_info("p_up", TensorProto.FLOAT, ["n", 1])],
        initializer=[
            helper.make_tensor("wobble", TensorProto.FLOAT, [], [wobble]),
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
        wobble: float = 0.0,
        horizon: int = 1,
        test_window: tuple[pd.Timestamp, pd.Timestamp] | None = None,
        broken_onnx: bool = False,
        refit: bool = False,
    ) -> str:
        self.count += 1
        spec = default_spec()
        rng = np.random.default_rng(self.count)
        scaler = FeatureScaler.fit(rng.normal(size=(50, len(spec.names))), names=spec.names)
        directory = self.tmp / f"bundle{self.count}"
        directory.mkdir()
        onnx_path = _constant_onnx(directory / "model.onnx", probability, len(spec.names), wobble)
        start, end = test_window or (self.test_start, self.test_end)
        metadata = {
            "pair": "BTC",
            "model_type": "lstm",
            "sequence_length": LENGTH,
            "horizon": horizon,
            "beats_baseline": beats_baseline,
            "test_window": {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "rows": TEST_ROWS,
            },
            "fit_end": (fit_end or self.test_start - pd.Timedelta(hours=100)).isoformat(),
            "refit": refit,
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
        # Broken after logging (which predicts once): what the registry then holds.
        location = self.client.get_logged_model(info.model_id).artifact_location
        logged = Path(urllib.parse.urlparse(location).path) / "artifacts"
        if spec_version is not None:
            # A version trained by other feature code: its logged spec names another version.
            replace(spec, version=spec_version).save(logged / "feature_spec.json")
        if broken_onnx:
            (logged / "model.onnx").write_bytes(b"not an onnx model")
        if not self.client.search_registered_models(f"name = '{NAME}'"):
            self.client.create_registered_model(NAME)
        created = self.client.create_model_version(
            NAME, source=info.model_uri, run_id=run.info.run_id
        )
        return str(created.version)

    def gate(self, version: str, *, force: bool = False, **overrides: object) -> GateDecision:
        settings = self.settings.model_copy(update=overrides)
        return apply_gate(
            self.client,
            name=NAME,
            version=version,
            candles=self.candles,
            settings=settings,
            force=force,
        )

    def production(self) -> str:
        return str(self.client.get_model_version_by_alias(NAME, "production").version)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(NAME, version).tags)


@pytest.fixture
def registry(settings: Settings, btc_candles: pd.DataFrame, tmp_path: Path) -> Registry:
    # The offline gate's own decisions (ML_PROMOTION=offline); shadow admission is tested below.
    return Registry(
        settings.model_copy(update={"promotion_mode": "offline"}), btc_candles, tmp_path
    )


def _unseen_rows(registry: Registry, seen_until: pd.Timestamp) -> int:
    """Test rows after `seen_until` (the last candle of a label the model learnt), counted here."""
    index = registry.candles.index
    window = index[(index >= registry.test_start) & (index <= registry.test_end)]
    return int((window > seen_until).sum())


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
    assert decision.challenger is not None
    assert decision.challenger == pytest.approx(math.log(2), abs=1e-6)
    assert decision.incumbent is not None
    assert decision.incumbent > decision.challenger
    assert decision.verdict is not None
    assert decision.verdict.high < 0  # significantly better, not merely not worse
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
    assert f"same {TEST_ROWS} rows unseen by both versions" in tags["tbml.promotion_reason"]
    assert "tbml.unproven" not in tags
    # The whole interval of per-row log-loss differences lies above 0, and the tags say so.
    assert decision.verdict is not None
    assert decision.verdict.low > 0
    assert float(tags["tbml.gate_delta_low"]) > 0
    assert float(tags["tbml.gate_delta_high"]) >= float(tags["tbml.gate_delta_low"])


def test_a_challenger_within_the_noise_is_promoted_though_its_point_estimate_is_worse(
    registry: Registry,
) -> None:
    old = registry.version(0.5)
    registry.gate(old)
    # Production's probability plus a small wobble that knows nothing of the next candle.
    new = registry.version(0.5, wobble=-0.1)

    decision = registry.gate(new)

    # A point-estimate gate would reject it: its log loss is a little higher ...
    assert decision.challenger is not None
    assert decision.incumbent is not None
    assert decision.challenger > decision.incumbent
    assert decision.promoted
    assert registry.production() == new
    # ... by less than the rows can tell from noise.
    assert decision.verdict is not None
    assert decision.verdict.low < 0 < decision.verdict.high
    assert f"not significantly worse than production version {old}" in decision.reason


def test_tags_and_reason_carry_the_interval_and_the_rows(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)
    new = registry.version(0.5, wobble=-0.1)

    decision = registry.gate(new)

    verdict = decision.verdict
    assert verdict is not None
    assert verdict.rows == TEST_ROWS
    tags = registry.tags(new)
    assert tags["tbml.gate_rows"] == str(TEST_ROWS)
    assert tags["tbml.gate_metric"] == "log_loss"
    assert tags["tbml.gate_lag"] == str(verdict.lag) == "5"  # Newey-West's rule at 400 rows
    assert "tbml.gate_block" not in tags
    assert float(tags["tbml.gate_delta_mean"]) == pytest.approx(verdict.mean, abs=1e-6)
    assert float(tags["tbml.gate_delta_low"]) == pytest.approx(verdict.low, abs=1e-6)
    assert float(tags["tbml.gate_delta_high"]) == pytest.approx(verdict.high, abs=1e-6)
    # The mean of the per-row differences is the difference of the two log losses.
    assert decision.challenger is not None
    assert decision.incumbent is not None
    assert verdict.mean == pytest.approx(decision.challenger - decision.incumbent, abs=1e-9)
    reason = tags["tbml.promotion_reason"]
    assert f"[{verdict.low:+.4f}, {verdict.high:+.4f}]" in reason
    assert f"same {TEST_ROWS} rows unseen by both versions" in reason
    assert f"at {TEST_ROWS} rows this comparison detects a difference of" in reason


def test_a_tie_promotes_unless_the_margin_asks_for_an_improvement(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)

    assert not registry.gate(registry.version(0.5), promotion_margin=0.01).promoted
    assert registry.gate(registry.version(0.5)).promoted


def test_a_negative_margin_tolerates_a_worse_challenger(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)
    worse = registry.version(0.8)

    assert not registry.gate(worse).promoted
    decision = registry.gate(worse, promotion_margin=-1.0)

    assert decision.promoted
    assert decision.verdict is not None
    assert decision.verdict.low > 0  # significantly worse, by less than the tolerated 1 nat
    assert registry.production() == worse


def test_the_promotion_metric_is_reported_but_log_loss_decides(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)
    # Constant probabilities all rank alike: ROC AUC 0.5 either way, a tie. ROC AUC has no
    # per-row form to bootstrap, so the verdict is on log loss, where 0.8 is far worse.
    decision = registry.gate(registry.version(0.8), promotion_metric="roc_auc")

    assert decision.metric == "roc_auc"
    assert decision.challenger == decision.incumbent == 0.5
    assert decision.verdict_metric == "log_loss"
    assert not decision.promoted
    assert "roc_auc 0.5000 vs 0.5000" in decision.reason
    assert registry.production() == old


def test_brier_is_decided_on_per_row_brier_differences(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)
    new = registry.version(0.7)

    decision = registry.gate(new, promotion_metric="brier")

    assert decision.verdict_metric == "brier"
    assert decision.verdict is not None
    assert decision.challenger is not None
    assert decision.incumbent is not None
    assert decision.verdict.mean == pytest.approx(
        decision.challenger - decision.incumbent, abs=1e-9
    )
    assert registry.tags(new)["tbml.gate_metric"] == "brier"
    assert decision.promoted == (decision.verdict.low <= 0)


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

    unseen = _unseen_rows(registry, seen_until)
    assert 100 <= unseen < TEST_ROWS
    assert decision.rows == unseen
    assert decision.verdict is not None
    assert decision.verdict.rows == unseen
    assert registry.tags(new)["tbml.gate_rows"] == str(unseen)
    assert "left out" in decision.reason


def test_fewer_unseen_rows_than_ml_gate_min_rows_reject_naming_the_setting(
    registry: Registry,
) -> None:
    seen_until = registry.test_start + pd.Timedelta(hours=350)
    old = registry.version(0.6, fit_end=seen_until)
    registry.gate(old)
    new = registry.version(0.5)  # better, but on rows too few to tell
    unseen = _unseen_rows(registry, seen_until)
    assert 0 < unseen < 100

    decision = registry.gate(new)

    assert not decision.promoted
    assert decision.verdict is None
    assert decision.rows == unseen
    assert registry.production() == old
    tags = registry.tags(new)
    assert tags["tbml.promotion"] == "rejected"
    assert f"only {unseen} of the {TEST_ROWS} rows" in tags["tbml.promotion_reason"]
    assert "ML_GATE_MIN_ROWS = 100" in tags["tbml.promotion_reason"]
    assert tags["tbml.gate_rows"] == str(unseen)
    assert "tbml.gate_delta_low" not in tags

    # With the setting lowered, the same rows (never the seen ones) are compared.
    again = registry.gate(new, gate_min_rows=unseen)
    assert again.promoted
    assert again.rows == unseen
    assert again.verdict is not None
    assert again.verdict.rows == unseen


def test_a_version_is_never_compared_on_rows_at_or_before_its_own_fit_end(
    registry: Registry,
) -> None:
    old = registry.version(0.6)  # learnt nothing of the test window
    registry.gate(old)
    own_fit_end = registry.test_start + pd.Timedelta(hours=350)
    new = registry.version(0.5, fit_end=own_fit_end)  # better, but it learnt most of its window
    unseen = _unseen_rows(registry, own_fit_end)
    assert 0 < unseen < 100

    decision = registry.gate(new)

    assert not decision.promoted
    assert decision.rows == unseen
    assert f"only {unseen} of the {TEST_ROWS} rows of its test window" in decision.reason
    assert registry.production() == old
    again = registry.gate(new, gate_min_rows=unseen)
    assert again.verdict is not None
    assert again.verdict.rows == unseen


def test_a_refit_that_learnt_its_own_test_window_is_not_scored_on_it(registry: Registry) -> None:
    old = registry.version(0.6)
    registry.gate(old)
    # A refit as once trained: it learnt every label through the newest candle, its test
    # window included, and its run holds no held-out predictions to stand in for it.
    refit = registry.version(0.5, refit=True, fit_end=registry.candles.index[-1])

    decision = registry.gate(refit)

    assert not decision.promoted
    assert decision.rows == 0
    assert decision.verdict is None
    assert (
        f"only 0 of the {TEST_ROWS} rows of its test window are unseen by both versions"
        in decision.reason
    )
    assert registry.production() == old
    assert "tbml.gate_delta_low" not in registry.tags(refit)


def test_an_unproven_challenger_never_replaces_a_proven_production_version(
    registry: Registry,
) -> None:
    old = registry.version(0.6)  # proven
    registry.gate(old)
    new = registry.version(0.5, beats_baseline=False)  # far better on the rows, unproven

    for mode in ("offline", "shadow"):
        decision = registry.gate(new, promotion_mode=mode)

        assert not decision.promoted
        assert f"its proof is weaker than production version {old}'s" in decision.reason
        assert decision.verdict is None
    assert registry.production() == old
    assert "challenger" not in registry.client.get_registered_model(NAME).aliases
    # Against an unproven production version the same one is compared, and passes.
    unproven = registry.version(0.6, beats_baseline=False)
    registry.gate(unproven, force=True)
    decision = registry.gate(new)
    assert decision.promoted
    assert decision.unproven
    assert decision.verdict is not None
    assert registry.production() == new


def test_rows_whose_close_did_not_move_are_neither_up_nor_down_and_not_compared(
    settings: Settings, btc_candles: pd.DataFrame, tmp_path: Path
) -> None:
    candles = btc_candles.copy()
    close = candles["close"].to_numpy(dtype=np.float64).copy()
    window = range(len(candles) - 1 - TEST_ROWS, len(candles) - 1)
    for row in window[10::50]:  # eight rows whose next close equals theirs
        close[row + 1] = close[row]
    candles["close"] = close
    ties = int(sum(close[row + 1] == close[row] for row in window))
    assert ties >= 8
    registry = Registry(
        settings.model_copy(update={"promotion_mode": "offline"}), candles, tmp_path
    )
    registry.gate(registry.version(0.6))

    decision = registry.gate(registry.version(0.5))

    assert decision.promoted
    assert decision.rows == TEST_ROWS - ties
    assert decision.verdict is not None
    assert decision.verdict.rows == TEST_ROWS - ties


def test_a_different_horizon_is_rejected_naming_both(registry: Registry) -> None:
    old = registry.version(0.6, horizon=3)
    registry.gate(old, force=True)  # its test window's newest rows have no 3-ahead label
    new = registry.version(0.5)

    decision = registry.gate(new)

    assert not decision.promoted
    assert registry.production() == old
    reason = registry.tags(new)["tbml.promotion_reason"]
    assert "horizon (1 candles ahead)" in reason
    assert f"production version {old}'s (3 candles ahead)" in reason


def test_challenger_whose_test_window_is_not_in_the_candles_is_rejected(
    registry: Registry,
) -> None:
    old = registry.version(0.6)
    registry.gate(old)
    # Tested on candles this gate does not have (newer than the newest it is given).
    after = registry.candles.index[-1]
    new = registry.version(
        0.5, test_window=(after + pd.Timedelta(hours=1), after + pd.Timedelta(hours=TEST_ROWS))
    )

    decision = registry.gate(new)

    assert not decision.promoted
    assert registry.production() == old
    tags = registry.tags(new)
    assert tags["tbml.promotion"] == "rejected"
    assert "cannot be scored on its own test window" in tags["tbml.promotion_reason"]
    assert "the candles hold 0 rows of its test window" in tags["tbml.promotion_reason"]
    assert "never promoted" in tags["tbml.promotion_reason"]


def test_challenger_whose_onnx_file_is_broken_is_rejected(registry: Registry) -> None:
    old = registry.version(0.6)
    registry.gate(old)
    new = registry.version(0.5, broken_onnx=True)

    decision = registry.gate(new)

    assert not decision.promoted
    assert registry.production() == old
    assert "cannot be scored on its own test window" in decision.reason


def test_challenger_whose_features_this_code_cannot_compute_is_rejected(
    registry: Registry,
) -> None:
    old = registry.version(0.6)
    registry.gate(old)
    new = registry.version(0.5, spec_version="000000000000")

    decision = registry.gate(new)

    assert not decision.promoted
    assert registry.production() == old
    assert "feature set is not the one this code computes" in decision.reason
    assert "000000000000" in decision.reason


def test_production_version_this_code_cannot_score_is_replaced(registry: Registry) -> None:
    old = registry.version(0.5, spec_version="000000000000")
    registry.gate(old, force=True)  # unscored: only the operator makes it production
    new = registry.version(0.9)

    decision = registry.gate(new)

    assert decision.promoted
    assert "cannot be scored by this code" in decision.reason
    assert registry.production() == new


def test_production_version_whose_onnx_file_is_broken_gives_way(registry: Registry) -> None:
    old = registry.version(0.5, broken_onnx=True)
    registry.gate(old, force=True)  # unscored: only the operator makes it production
    new = registry.version(0.9)

    decision = registry.gate(new)

    assert decision.promoted
    assert decision.verdict is None
    assert f"production version {old} cannot be scored by this code" in decision.reason
    assert registry.production() == new


def test_force_promotes_and_clears_the_numbers_of_an_earlier_gating(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old)
    worse = registry.version(0.8)
    assert not registry.gate(worse).promoted
    assert "tbml.gate_delta_low" in registry.tags(worse)

    decision = registry.gate(worse, force=True)

    assert decision.promoted
    assert registry.production() == worse
    tags = registry.tags(worse)
    assert "promoted by the operator (--force)" in tags["tbml.promotion_reason"]
    assert not any(key.startswith("tbml.gate_") for key in tags)


# --- ML_PROMOTION=shadow: a passed version becomes the challenger --------------------------


def test_in_shadow_mode_a_passing_version_becomes_the_challenger_and_production_stays(
    registry: Registry,
) -> None:
    old = registry.version(0.9)
    registry.gate(old, promotion_mode="shadow")  # the first version: production at once
    new = registry.version(0.5)

    decision = registry.gate(new, promotion_mode="shadow")

    assert decision.promoted
    assert decision.outcome == "challenger"
    assert registry.production() == old
    challenger = registry.client.get_model_version_by_alias(NAME, "challenger")
    assert str(challenger.version) == new
    tags = registry.tags(new)
    assert tags["tbml.promotion"] == "challenger"
    assert "admitted as the challenger (ML_PROMOTION=shadow)" in tags["tbml.promotion_reason"]
    assert int(tags["tbml.challenger_since"]) > 0
    assert tags["tbml.gate_rows"] == str(TEST_ROWS)


def test_a_newer_challenger_supersedes_the_old_one_which_is_tagged_retired(
    registry: Registry,
) -> None:
    registry.gate(registry.version(0.9), promotion_mode="shadow")
    first = registry.version(0.5)
    registry.gate(first, promotion_mode="shadow")
    second = registry.version(0.5)

    decision = registry.gate(second, promotion_mode="shadow")

    assert decision.outcome == "challenger"
    assert f"replaces challenger version {first}" in decision.reason
    assert str(registry.client.get_model_version_by_alias(NAME, "challenger").version) == second
    assert registry.tags(first)["tbml.challenger_outcome"] == "retired"
    assert f"superseded by version {second}" in registry.tags(first)["tbml.challenger_reason"]


def test_in_shadow_mode_a_rejected_version_gets_no_alias(registry: Registry) -> None:
    old = registry.version(0.5)
    registry.gate(old, promotion_mode="shadow")
    worse = registry.version(0.9)

    decision = registry.gate(worse, promotion_mode="shadow")

    assert decision.outcome == "rejected"
    assert registry.production() == old
    aliases = registry.client.get_registered_model(NAME).aliases
    assert "challenger" not in aliases


def test_forced_promotion_skips_the_challenger_stage_and_clears_its_alias(
    registry: Registry,
) -> None:
    registry.gate(registry.version(0.9), promotion_mode="shadow")
    new = registry.version(0.5)
    registry.gate(new, promotion_mode="shadow")

    decision = registry.gate(new, force=True, promotion_mode="shadow")

    assert decision.outcome == "promoted"
    assert registry.production() == new
    assert "challenger" not in registry.client.get_registered_model(NAME).aliases
