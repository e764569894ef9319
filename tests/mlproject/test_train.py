"""End to end on real candles: a run, its artifacts, a registered version, the gate at work.

Two trainings on the newest 400 BTC candles into a temporary tracking store: a champion (the
first version, promoted by the gate) and a deliberately worse challenger (too high a learning
rate), which the gate must reject.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from mlproject.baselines import BASELINES
from mlproject.config import TrainConfig
from mlproject.gate import apply_gate
from mlproject.train import TrainingOutcome, train
from pipelines.modelbundle import download_bundle
from pipelines.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.tracking import PRODUCTION_STAGE
from tests.conftest import BUNDLED, stores_under

pytestmark = pytest.mark.slow

NAME = "BTC-lstm"
SMALL: dict[str, Any] = {
    "pair": "BTC",
    "epochs": 2,
    "sequence_length": 12,
    "units": 8,
    "layers": 1,
    "max_rows": 400,
}
WORSE: dict[str, Any] = {**SMALL, "learning_rate": 0.05, "units": 32}


@dataclass(frozen=True)
class Trained:
    settings: Settings
    client: MlflowClient
    champion: TrainingOutcome
    challenger: TrainingOutcome


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("tracking")
    # The held-out model registered, as with ML_REFIT=false: these tests hold the bundle to the
    # run's held-out scores. The refit is tests/mlproject/test_refit.py's.
    settings = stores_under(root, refit=False)
    champion = train(TrainConfig(**SMALL), settings=settings)
    challenger = train(TrainConfig(**WORSE), settings=settings)
    return Trained(settings, MlflowClient(settings.tracking_uri), champion, challenger)


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_run_records_params_epoch_metrics_and_tags(trained: Trained) -> None:
    run = trained.client.get_run(trained.champion.run_id)

    assert run.info.status == "FINISHED"
    assert run.data.params["pair"] == "BTC"
    assert run.data.params["sequence_length"] == "12"
    assert run.data.params["register"] == "true"
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        history = trained.client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [0, 1], key
    for prefix in ("test", *(f"baseline_{name}" for name in BASELINES)):
        for metric in ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "brier"):
            assert f"{prefix}_{metric}" in run.data.metrics
    for strategy in ("signals", "buy_hold"):
        for metric in ("cumulative_return", "sharpe", "max_drawdown", "hit_rate", "n_trades"):
            assert f"{strategy}_{metric}" in run.data.metrics
    assert run.data.metrics["test_rows"] == trained.champion.scores.y.size
    tags = run.data.tags
    assert tags["pair"] == "BTC"
    assert tags["model_type"] == "lstm"
    assert len(tags["feature_set_version"]) == 12
    assert tags["data_range"].endswith("2023-12-30T18:00:00+00:00")
    assert len(tags["git_commit"]) == 40
    assert tags["beats_baseline"] in {"true", "false"}


def test_run_logs_the_paired_verdict_behind_beats_baseline(trained: Trained) -> None:
    scores = trained.champion.scores
    metrics = trained.client.get_run(trained.champion.run_id).data.metrics
    verdict = scores.verdict

    assert metrics["beats_interval_low"] == verdict.low
    assert metrics["beats_interval_high"] == verdict.high
    assert metrics["beats_mean_difference"] == verdict.mean
    assert metrics["beats_rows"] == metrics["test_rows"] == scores.y.size
    assert metrics["beats_lag"] == verdict.lag  # the Newey-West lag of the paired interval
    assert verdict.low <= verdict.mean <= verdict.high
    # The logged "beats" is the interval's: below -margin against every baseline.
    margin = trained.settings.promotion_margin
    assert scores.beats_baseline is all(
        metrics[f"verdict_{name}_high"] < -margin for name in BASELINES
    )
    # The strongest baseline is the one the model's mean difference is largest against.
    strongest = max(BASELINES, key=lambda name: metrics[f"verdict_{name}_mean"])
    assert scores.strongest_baseline == strongest


def test_run_artifacts_hold_plots_summary_keras_model_and_the_model_its_bundle(
    trained: Trained,
) -> None:
    artifacts = _artifacts(trained.client, trained.champion.run_id)

    plots = {"learning_curves", "confusion_matrix", "reliability", "equity"}
    assert {f"plots/{name}.png" for name in plots} <= artifacts
    assert {
        "summary.md",
        "keras/model.keras",
        "verdict/predictions.csv",
        "verdict/verdict.json",
    } <= artifacts
    assert not any(path.startswith("bundle/") for path in artifacts)
    version = trained.client.get_model_version(NAME, trained.champion.version or "")
    model_files = {
        item.path
        for item in trained.client.list_logged_model_artifacts(
            str(version.source).removeprefix("models:/"), "artifacts"
        )
    }
    assert {
        "artifacts/model.onnx",
        "artifacts/scaler.json",
        "artifacts/feature_spec.json",
        "artifacts/metadata.json",
    } <= model_files
    local = Path(trained.client.download_artifacts(trained.champion.run_id, "plots/equity.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = trained.client.download_artifacts(trained.champion.run_id, "summary.md")
    text = Path(summary).read_text()
    assert "| **model** |" in text
    assert "tbml verdict RUN_ID" in text
    assert "buy_hold" in text


def test_registered_model_is_a_pyfunc_of_candles_with_signature_and_input_example(
    trained: Trained,
) -> None:
    version = trained.client.get_model_version(NAME, trained.champion.version or "")
    info = mlflow.models.get_model_info(str(version.source))

    assert info.signature is not None
    assert info.signature.inputs.input_names() == [
        "timestamp",
        "open",
        "high",
        "low",
        "close",
        "volume",
    ]
    assert "probability" in info.signature.outputs.input_names()
    assert info.saved_input_example_info is not None
    assert set(info.flavors) == {"python_function"}
    assert info.flavors["python_function"]["code"] == "code"


def test_first_version_is_registered_and_made_production(trained: Trained) -> None:
    champion = trained.champion
    assert champion.registered_model == NAME
    assert champion.version == "1"
    assert champion.promotion == "promoted"
    version = trained.client.get_model_version(NAME, "1")
    assert version.run_id == champion.run_id
    assert version.tags["tbml.promotion"] == "promoted"
    assert version.tags["tbml.beats_baseline"] == str(champion.scores.beats_baseline).lower()
    verdict = champion.scores.verdict
    assert version.tags["tbml.beats_against"] == champion.scores.strongest_baseline
    assert float(version.tags["tbml.beats_interval_low"]) == verdict.low
    assert float(version.tags["tbml.beats_interval_high"]) == verdict.high
    assert int(version.tags["tbml.beats_rows"]) == champion.scores.y.size
    assert str(trained.client.get_model_version_by_alias(NAME, "production").version) == "1"


def test_a_challenger_with_too_few_unseen_rows_stays_registered_but_is_rejected_with_its_reason(
    trained: Trained,
) -> None:
    # Trained on the newest 400 candles, its test window holds 58 rows: fewer than
    # ML_GATE_MIN_ROWS (100), so the gate refuses to decide on them (it never falls back to
    # rows production trained on, and never promotes unscored). The paired verdict on enough
    # rows is in tests/mlproject/test_gate.py.
    challenger = trained.challenger
    decision = challenger.decision
    assert decision is not None
    assert decision.promoted is False
    assert decision.incumbent_version == "1"
    assert decision.rows is not None
    assert decision.rows < trained.settings.gate_min_rows
    assert decision.rows <= challenger.scores.y.size

    assert challenger.promotion == "rejected"
    version = trained.client.get_model_version(NAME, "2")
    assert version.tags["tbml.promotion"] == "rejected"
    assert "ML_GATE_MIN_ROWS" in version.tags["tbml.promotion_reason"]
    assert str(trained.client.get_model_version_by_alias(NAME, "production").version) == "1"
    assert trained.client.get_model_version(NAME, "1").current_stage == PRODUCTION_STAGE
    assert version.current_stage != PRODUCTION_STAGE


def test_run_tags_tell_the_queue_what_happened(trained: Trained) -> None:
    for outcome, promotion in ((trained.champion, "promoted"), (trained.challenger, "rejected")):
        tags = trained.client.get_run(outcome.run_id).data.tags
        assert tags["tbml.registered_model"] == NAME
        assert tags["tbml.registered_version"] == outcome.version
        assert tags["tbml.promotion"] == promotion
        assert tags["tbml.promotion_reason"] == outcome.reason
        assert tags["tbml.beats_baseline"] == str(outcome.scores.beats_baseline).lower()


def test_bundle_reproduces_the_logged_test_metrics_without_tensorflow(
    trained: Trained, tmp_path: Path
) -> None:
    run = trained.client.get_run(trained.champion.run_id)
    logged = {k[len("test_") :]: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    logged.pop("rows")
    # A fresh interpreter in which importing TensorFlow or Keras fails.
    code = f"""
import json, sys
sys.modules["tensorflow"] = None
sys.modules["keras"] = None
from pathlib import Path
import pandas as pd
from mlflow import MlflowClient
from mlproject.metrics import classification_metrics
from mlproject.scoring import score_bundle
from pipelines.candles.store import CandleStore
from pipelines.modelbundle import download_bundle

client = MlflowClient({trained.settings.tracking_uri!r})
bundle = download_bundle(client, name={NAME!r}, version="1", dst=Path({str(tmp_path)!r}))
window = bundle.metadata["test_window"]
candles = CandleStore(bundled_dir=Path({str(BUNDLED)!r}), data_dir=Path("/nonexistent")).load("BTC")
index = candles.index
rows = index[(index >= pd.Timestamp(window["start"])) & (index <= pd.Timestamp(window["end"]))]
scored = score_bundle(
    bundle, candles=candles, timestamps=pd.DatetimeIndex(rows), horizon=bundle.horizon
)
print(json.dumps(classification_metrics(y_true=scored.y, proba=scored.proba)))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    reproduced = json.loads(result.stdout.strip().splitlines()[-1])

    assert set(reproduced) == set(logged)
    for metric, value in logged.items():
        assert reproduced[metric] == pytest.approx(value, abs=1e-5), metric


def test_same_command_twice_gives_the_same_metrics(trained: Trained) -> None:
    again = train(TrainConfig(**SMALL, register=False), settings=trained.settings)

    assert again.promotion == "not_registered"
    for name, metrics in trained.champion.scores.metrics.items():
        for metric, value in metrics.items():
            assert again.scores.metrics[name][metric] == pytest.approx(value, abs=1e-6)


def _copy_version(trained: Trained, name: str, outcome: TrainingOutcome) -> str:
    """Register an already-logged model (with its run's bundle) under another name."""
    source = trained.client.get_model_version(NAME, outcome.version or "")
    if not trained.client.search_registered_models(f"name = '{name}'"):
        trained.client.create_registered_model(name)
    copy = trained.client.create_model_version(
        name, source=str(source.source), run_id=outcome.run_id, tags={"pair": "BTC"}
    )
    return str(copy.version)


def test_unproven_first_version_is_promoted_and_marked(
    trained: Trained, btc_candles: pd.DataFrame
) -> None:
    assert trained.challenger.scores.beats_baseline is False
    version = _copy_version(trained, "ETH-gru", trained.challenger)

    decision = apply_gate(
        trained.client,
        name="ETH-gru",
        version=version,
        candles=btc_candles,
        settings=trained.settings,
    )

    assert decision.promoted
    assert decision.unproven
    tags = trained.client.get_model_version("ETH-gru", version).tags
    assert tags["tbml.unproven"] == "true"
    assert "does not beat its strongest baseline" in tags["tbml.promotion_reason"]
    assert "served as HOLD" in tags["tbml.promotion_reason"]


def test_promote_command_replaces_a_worse_production_version(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tbml.cli import app

    worse = _copy_version(trained, "XMR-cnn", trained.challenger)
    better = _copy_version(trained, "XMR-cnn", trained.champion)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.settings.tracking_uri)
    monkeypatch.setenv("ML_ARTIFACT_ROOT", str(trained.settings.artifact_root))
    # These tiny trainings test on 58 rows; the gate decides on them only when allowed to.
    monkeypatch.setenv("ML_GATE_MIN_ROWS", "50")
    # Production at once, as the offline gate decides (shadow admission: test_gate.py).
    monkeypatch.setenv("ML_PROMOTION", "offline")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        forced = runner.invoke(app, ["promote", "XMR-cnn", worse, "--force"])
        assert forced.exit_code == 0, forced.output
        result = runner.invoke(app, ["promote", "XMR-cnn", better])
    finally:
        get_settings.cache_clear()

    assert result.exit_code == 0, result.output
    assert f"XMR-cnn version {better} promoted" in result.output
    client = trained.client
    assert str(client.get_model_version_by_alias("XMR-cnn", "production").version) == better
    assert client.get_model_version("XMR-cnn", better).current_stage == PRODUCTION_STAGE
    assert client.get_model_version("XMR-cnn", worse).current_stage == "Archived"


def test_downloaded_bundle_matches_the_keras_model(trained: Trained, tmp_path: Path) -> None:
    import keras

    bundle = download_bundle(trained.client, name=NAME, version="1", dst=tmp_path / "bundle")
    local = trained.client.download_artifacts(
        trained.champion.run_id, "keras/model.keras", str(tmp_path)
    )
    keras_model = keras.saving.load_model(local)
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(64, 12, len(bundle.spec.names))).astype(np.float32)

    keras_out = np.asarray(keras_model.predict(windows, verbose=0)).reshape(-1)

    np.testing.assert_allclose(
        bundle.predict_proba(windows, scaled=True, calibrated=False), keras_out, atol=1e-5
    )


def test_bundle_metadata_carries_the_verdict_the_gate_and_service_read(
    trained: Trained, tmp_path: Path
) -> None:
    bundle = download_bundle(trained.client, name=NAME, version="1", dst=tmp_path / "bundle")
    scores = trained.champion.scores

    assert set(bundle.metadata["baseline_metrics"]) == set(BASELINES)
    assert bundle.metadata["strongest_baseline"] == scores.strongest_baseline
    assert bundle.metadata["beats_baseline"] is scores.beats_baseline
    paired = bundle.metadata["beats_verdict"]
    assert paired["strongest_baseline"] == scores.strongest_baseline
    assert paired["verdicts"][scores.strongest_baseline] == scores.verdict.to_dict()
    assert paired["rule"]["metric"] == "log_loss"
