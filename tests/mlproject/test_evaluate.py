"""Walk-forward evaluation on a slice of real candles: folds, intervals, report, MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlproject.evaluate import PREDICTORS, EvaluationPlan, evaluate
from pipelines.settings import Settings

pytestmark = pytest.mark.slow


def test_walk_forward_reports_every_fold_and_predictor(settings: Settings, tmp_path: Path) -> None:
    small = settings.model_copy(update={"sequence_length": 12, "lstm_units": 4, "lstm_layers": 1})
    plan = EvaluationPlan.from_settings(
        small, pairs=["btc"], folds=2, test_size=50, epochs=1, max_rows=600
    )

    reports, path = evaluate(plan, settings=small, output_dir=tmp_path / "reports")

    assert [(r.pair, r.fold) for r in reports] == [("BTC", "1"), ("BTC", "2"), ("BTC", "all")]
    first, second, pooled = reports
    assert first.test_end < second.test_start
    assert second.test_end == "2023-12-30T17:00:00+00:00"  # the newest candle with a label
    assert pooled.rows == first.rows + second.rows == 100
    for report in reports:
        assert set(report.metrics) == set(PREDICTORS)
        for name in PREDICTORS:
            low, high = report.intervals[name]["accuracy"]
            assert low <= report.metrics[name]["accuracy"] <= high
        # "beats" is the paired verdict: every baseline's interval below -margin.
        assert set(report.verdicts) == set(PREDICTORS) - {"model"}
        assert all(v["rows"] == report.rows for v in report.verdicts.values())
        assert report.beats_baseline is all(
            v["high"] < -report.rule["margin"] for v in report.verdicts.values()
        )
        strongest = max(report.verdicts, key=lambda name: report.verdicts[name]["mean"])
        assert report.strongest_baseline == strongest
    text = path.read_text()
    assert text.count("| BTC | ") == 3 + 3 * len(PREDICTORS)  # summary and detail rows
    assert "Wilson" in text
    assert "paired moving-block bootstrap" in text
    assert json.loads(path.with_suffix(".json").read_text())[2]["fold"] == "all"

    client = MlflowClient(small.tracking_uri)
    experiment = client.get_experiment_by_name(small.evaluation_experiment_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["folds"] == "2"
    history = client.get_metric_history(run.info.run_id, "BTC/model/accuracy")
    assert [m.step for m in history] == [1, 2]
    logged = client.get_metric_history(run.info.run_id, "BTC/beats_interval_low_pooled")
    assert [m.value for m in logged] == [pooled.verdicts[pooled.strongest_baseline]["low"]]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "walk_forward_lstm.md",
        "walk_forward_lstm.json",
    }
