"""Paired verdicts: what "beats" means, the per-row artifact, and `tbml verdict` recomputing it.

The first tests judge hand-made forecasters whose answer is known; the last ones train two
small real runs into a temporary tracking store and run the installed `tbml` on them.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlproject.baselines import BASELINES, Prediction
from mlproject.config import TrainConfig
from mlproject.scoring import MODEL, Scores, VerdictRule, judge, score
from mlproject.train import TrainingOutcome, train
from mlproject.verdict import (
    OUTCOME,
    PREDICTIONS_ARTIFACT,
    TIMESTAMP,
    VERDICT_ARTIFACT,
    RunRows,
    VerdictError,
    compare_runs,
    recompute,
)
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.scores import log_losses
from pipelines.settings import PROJECT_ROOT, Settings
from tests.conftest import stores_under

TBML = PROJECT_ROOT / ".venv" / "bin" / "tbml"
ROWS = 2000


def _world(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities of "up" far from 0.5, and outcomes drawn from them."""
    rng = np.random.default_rng(seed)
    truth = np.where(rng.random(ROWS) < 0.5, 0.3, 0.7)
    return truth, (rng.random(ROWS) < truth).astype(np.int8)


def _scored(
    y: np.ndarray, model: np.ndarray, baseline: np.ndarray, *, margin: float = 0.0
) -> Scores:
    settings = Settings(_env_file=None, promotion_margin=margin)
    return score(
        y=y,
        model_proba=model,
        baseline_predictions={"baseline": Prediction(baseline, (baseline >= 0.5).astype(np.int8))},
        returns=np.zeros(y.size),
        settings=settings,
    )


def test_model_equal_to_a_baseline_plus_noise_does_not_beat_it() -> None:
    truth, y = _world()
    noise = np.random.default_rng(1).normal(scale=0.01, size=ROWS)

    scores = _scored(y, np.clip(truth + noise, 0.01, 0.99), truth)

    verdict = scores.verdict
    assert verdict.low < 0 < verdict.high  # the interval straddles zero
    assert verdict.rows == ROWS
    assert scores.beats_baseline is False


def test_the_verdict_is_the_lifecycles_paired_interval_of_the_per_row_differences() -> None:
    truth, y = _world()
    model = np.clip(truth + np.random.default_rng(2).normal(scale=0.05, size=ROWS), 0.01, 0.99)

    verdict = VerdictRule(margin=0.0, level=0.9).compare(y, model, truth)

    assert verdict == paired_interval(log_losses(model, y) - log_losses(truth, y), level=0.9)


def test_a_rule_saved_when_verdicts_were_bootstrapped_is_read_for_its_margin_and_level() -> None:
    old = {"metric": "log_loss", "block": 24, "margin": 0.002, "resamples": 2000, "seed": 0}

    rule = VerdictRule.from_dict({**old, "level": 0.9})

    assert rule == VerdictRule(margin=0.002, level=0.9)
    assert VerdictRule.from_dict(old).level == 0.95
    assert VerdictRule.from_dict(rule.to_dict()) == rule
    assert rule.to_dict()["method"] == "newey-west"


def test_clearly_better_model_beats_the_baseline() -> None:
    truth, y = _world()

    scores = _scored(y, truth, np.full(ROWS, 0.5))

    verdict = scores.verdict
    assert verdict.high < 0
    assert verdict.mean == pytest.approx(
        scores.metrics[MODEL]["log_loss"] - scores.metrics["baseline"]["log_loss"], abs=1e-9
    )
    assert scores.beats_baseline is True


def test_margin_larger_than_the_advantage_withholds_the_beat() -> None:
    truth, y = _world()

    scores = _scored(y, truth, np.full(ROWS, 0.5), margin=1.0)

    assert scores.verdict.high < 0
    assert scores.beats_baseline is False


def test_beats_needs_every_baseline_and_names_the_strongest() -> None:
    truth, y = _world()
    probas = {MODEL: truth, "coin": np.full(ROWS, 0.5), "twin": truth.copy()}

    judgement = judge(y, probas, rule=VerdictRule(margin=0.0))

    assert judgement.verdicts["coin"].better()
    assert judgement.strongest_baseline == "twin"
    assert judgement.verdict.mean == 0.0
    assert judgement.beats_baseline is False


def _rows(run_id: str, times: pd.DatetimeIndex, y: np.ndarray, model: np.ndarray) -> RunRows:
    frame = pd.DataFrame(
        {TIMESTAMP: [t.isoformat() for t in times], OUTCOME: y, MODEL: model, "majority": 0.5}
    )
    return RunRows(run_id=run_id, frame=frame, rule=VerdictRule(margin=0.0), logged={})


def test_two_runs_are_compared_on_the_rows_both_hold_only() -> None:
    truth, y = _world()
    times = pd.date_range("2023-01-01", periods=ROWS, freq="h", tz="UTC")
    first = _rows("a", times, y, truth)
    # The second starts 500 rows later and is a coin toss: worse on the shared rows.
    second = _rows("b", times[500:], y[500:], np.full(ROWS - 500, 0.5))

    comparison = compare_runs(first, second)

    assert comparison.verdict.rows == ROWS - 500
    assert comparison.verdict.better()
    expected = VerdictRule(margin=0.0).compare(y[500:], truth[500:], second.frame[MODEL].to_numpy())
    assert comparison.verdict == expected


def test_recompute_uses_the_logged_rule_unless_given_another_margin() -> None:
    truth, y = _world()
    times = pd.date_range("2023-01-01", periods=ROWS, freq="h", tz="UTC")
    rows = _rows("a", times, y, truth)

    logged = recompute(rows)
    stricter = recompute(rows, margin=1.0)

    assert logged.beats_baseline is True
    assert logged.verdict == VerdictRule(margin=0.0).compare(y, truth, np.full(ROWS, 0.5))
    assert stricter.verdict == logged.verdict
    assert stricter.beats_baseline is False


def test_runs_without_shared_rows_or_with_other_outcomes_cannot_be_paired() -> None:
    truth, y = _world()
    times = pd.date_range("2023-01-01", periods=ROWS, freq="h", tz="UTC")
    first = _rows("a", times[:1000], y[:1000], truth[:1000])

    with pytest.raises(VerdictError, match="share no scored candle"):
        compare_runs(first, _rows("b", times[1000:], y[1000:], truth[1000:]))
    with pytest.raises(VerdictError, match="disagree on the outcome"):
        compare_runs(first, _rows("c", times[:1000], 1 - y[:1000], truth[:1000]))


@dataclass(frozen=True)
class Runs:
    settings: Settings
    client: MlflowClient
    first: TrainingOutcome
    second: TrainingOutcome


SMALL: dict[str, Any] = {"pair": "BTC", "epochs": 2, "sequence_length": 12, "units": 8, "layers": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("verdict")
    settings = stores_under(root)
    # The second sees 100 more candles: its test window overlaps the first's newest rows.
    first = train(TrainConfig(**SMALL, max_rows=400, register=False), settings=settings)
    second = train(TrainConfig(**SMALL, max_rows=500, register=False), settings=settings)
    return Runs(settings, MlflowClient(settings.tracking_uri), first, second)


def _tbml(runs: Runs, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": runs.settings.tracking_uri,
        "ML_ARTIFACT_ROOT": str(runs.settings.artifact_root),
    }
    return subprocess.run(
        [str(TBML), "verdict", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_run_saves_every_rows_probabilities_and_its_rule(runs: Runs, tmp_path: Path) -> None:
    outcome = runs.first
    csv = runs.client.download_artifacts(outcome.run_id, PREDICTIONS_ARTIFACT, str(tmp_path))
    frame = pd.read_csv(csv)

    assert list(frame.columns) == [TIMESTAMP, OUTCOME, MODEL, *BASELINES]
    assert len(frame) == outcome.scores.y.size
    np.testing.assert_array_equal(frame[OUTCOME], outcome.scores.y)
    for name, prediction in outcome.scores.predictions.items():
        np.testing.assert_array_equal(frame[name].to_numpy(), prediction.proba, err_msg=name)
    tags = runs.client.get_run(outcome.run_id).data.tags
    assert frame[TIMESTAMP].iloc[0] == tags["test_window"].split(" .. ")[0]
    assert frame[TIMESTAMP].iloc[-1] == tags["test_window"].split(" .. ")[1]
    record_path = runs.client.download_artifacts(outcome.run_id, VERDICT_ARTIFACT, str(tmp_path))
    record = json.loads(Path(record_path).read_text())
    assert record["rule"] == outcome.scores.rule.to_dict()
    assert record["beats_baseline"] == outcome.scores.beats_baseline


@pytest.mark.slow
def test_tbml_verdict_recomputes_the_verdict_the_run_logged(runs: Runs) -> None:
    run = runs.client.get_run(runs.first.run_id)
    metrics, tags = run.data.metrics, run.data.tags

    result = _tbml(runs, runs.first.run_id, "--json")

    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert str(data["beats_baseline"]).lower() == tags["tbml.beats_baseline"]
    assert data["strongest_baseline"] == tags["strongest_baseline"]
    against = data["verdicts"][data["strongest_baseline"]]
    assert against["low"] == metrics["beats_interval_low"]
    assert against["high"] == metrics["beats_interval_high"]
    assert against["mean"] == metrics["beats_mean_difference"]
    assert against["rows"] == metrics["beats_rows"] == metrics["test_rows"]
    for name in BASELINES:
        assert data["verdicts"][name]["low"] == metrics[f"verdict_{name}_low"], name
        assert data["verdicts"][name]["high"] == metrics[f"verdict_{name}_high"], name

    text = _tbml(runs, runs.first.run_id)
    assert text.returncode == 0, text.stderr[-3000:]
    assert f"beats_baseline: {tags['tbml.beats_baseline']}" in text.stdout
    assert f"strongest baseline: {tags['strongest_baseline']}" in text.stdout


@pytest.mark.slow
def test_tbml_verdict_of_two_runs_pairs_their_models_on_shared_rows(
    runs: Runs, tmp_path: Path
) -> None:
    frames = [
        pd.read_csv(
            runs.client.download_artifacts(o.run_id, PREDICTIONS_ARTIFACT, str(tmp_path / n))
        )
        for n, o in (("first", runs.first), ("second", runs.second))
    ]
    shared = frames[0].merge(frames[1], on=[TIMESTAMP, OUTCOME], suffixes=("_1", "_2"))
    assert 0 < len(shared) < len(frames[1])  # the second run holds rows the first does not
    expected = runs.first.scores.rule.compare(
        shared[OUTCOME].to_numpy(), shared[f"{MODEL}_1"].to_numpy(), shared[f"{MODEL}_2"].to_numpy()
    )

    result = _tbml(runs, runs.first.run_id, runs.second.run_id, "--json")

    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert data["verdict"] == expected.to_dict()
    assert data["first_better"] is expected.better(runs.first.scores.rule.margin)
    text = _tbml(runs, runs.first.run_id, runs.second.run_id)
    assert f"on the {len(shared)} test rows both hold" in text.stdout
    assert "verdict: " in text.stdout


@pytest.mark.slow
def test_tbml_verdict_of_an_unknown_run_says_so(runs: Runs) -> None:
    result = _tbml(runs, "0123456789abcdef0123456789abcdef")

    assert result.returncode == 2
    assert "run '0123456789abcdef0123456789abcdef' is not in the tracking store" in result.stderr
    assert "Traceback" not in result.stderr
