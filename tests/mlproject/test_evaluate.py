"""Walk-forward evaluation on a slice of real candles: folds, intervals, report, MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from mlproject.evaluate import (
    PREDICTORS,
    EvaluationPlan,
    FoldReport,
    evaluate,
    report_document,
    summarise,
)
from mlproject.evaluation_page import ReportError, choose, combine_reports, load_report
from pipelines.settings import Settings
from tbml.cli import app


@pytest.mark.slow
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
    # Summary, a verdict per baseline, every predictor, every seed: one row each per fold.
    baselines = len(PREDICTORS) - 1
    assert text.count("| BTC | ") == 3 * (1 + baselines + len(PREDICTORS) + 1)
    assert "Wilson" in text
    assert "paired moving-block bootstrap" in text
    # Each fold's test probabilities are calibrated on its validation rows, and it says how.
    for report in (first, second):
        assert report.extra["calibration"]["method"] in {"none", "platt", "isotonic"}
        assert report.extra["raw_log_loss"] > 0
    assert "Test probabilities calibrated on each fold's validation rows" in text
    document = json.loads(path.with_suffix(".json").read_text())
    assert document["complete"] is True
    assert [f["fold"] for f in document["folds"]] == ["1", "2", "all"]
    assert document["plan"]["seeds"] == [42]

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


@pytest.mark.slow
def test_several_seeds_give_a_report_per_seed_and_their_summary(
    settings: Settings, tmp_path: Path
) -> None:
    small = settings.model_copy(update={"sequence_length": 12, "lstm_units": 4, "lstm_layers": 1})
    plan = EvaluationPlan.from_settings(
        small, pairs=["btc"], folds=1, test_size=50, epochs=1, max_rows=500, seeds=[1, 2]
    )

    reports, path = evaluate(plan, settings=small, output_dir=tmp_path / "reports")

    assert [(r.fold, r.seed) for r in reports] == [("1", 1), ("all", 1), ("1", 2), ("all", 2)]
    # The model's initialisation differs by seed; the deterministic baselines do not.
    assert reports[0].metrics["model"]["log_loss"] != reports[2].metrics["model"]["log_loss"]
    for name in ("majority", "last_move", "logistic"):
        assert reports[0].metrics[name] == reports[2].metrics[name]
    document = json.loads(path.with_suffix(".json").read_text())
    assert [(f["fold"], f["seed"]) for f in document["folds"]] == [
        ("1", 1),
        ("all", 1),
        ("1", 2),
        ("all", 2),
    ]
    pooled = document["summary"][1]
    assert (pooled["fold"], pooled["seeds"]) == ("all", [1, 2])
    losses = [r.metrics["model"]["log_loss"] for r in reports if r.fold == "all"]
    assert pooled["mean"]["model"]["log_loss"] == pytest.approx(sum(losses) / 2)
    assert pooled["sd"]["model"]["log_loss"] == pytest.approx(abs(losses[0] - losses[1]) / 2**0.5)
    assert " ± " in path.read_text()

    client = MlflowClient(small.tracking_uri)
    experiment = client.get_experiment_by_name(small.evaluation_experiment_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["seeds"] == "1,2"
    assert run.data.metrics["seed2/BTC/model/log_loss_pooled"] == losses[1]
    assert run.data.metrics["BTC/model/log_loss_mean_pooled"] == pytest.approx(sum(losses) / 2)
    assert run.data.metrics["BTC/beats_seeds_pooled"] == pooled["beats_seeds"]


def _fold(
    pair: str,
    fold: str,
    seed: int,
    *,
    model: float,
    baselines: dict[str, float],
    high: dict[str, float] | None = None,
    window: tuple[str, str] = ("2023-10-08T00:00:00+00:00", "2023-12-30T17:00:00+00:00"),
) -> FoldReport:
    """A fold report with the given log losses; the paired interval is the difference +- 0.004
    unless `high` sets its upper end."""
    losses = {"model": model, **baselines}
    metrics = {
        name: {
            "accuracy": 0.5 + (0.693 - loss),
            "balanced_accuracy": 0.5,
            "roc_auc": 0.5,
            "log_loss": loss,
            "brier": 0.25,
        }
        for name, loss in losses.items()
    }
    verdicts: dict[str, dict[str, float | int]] = {}
    for name, loss in baselines.items():
        mean = model - loss
        top = mean + 0.004 if high is None or name not in high else high[name]
        verdicts[name] = {"mean": mean, "low": mean - 0.004, "high": top, "rows": 2000, "block": 24}
    return FoldReport(
        pair=pair,
        fold=fold,
        test_start=window[0],
        test_end=window[1],
        rows=2000,
        metrics=metrics,
        intervals={
            name: {"accuracy": (0.4, 0.6), "roc_auc": (0.4, 0.6), "log_loss": (0.6, 0.8)}
            for name in losses
        },
        strongest_baseline=max(verdicts, key=lambda name: float(verdicts[name]["mean"])),
        beats_baseline=all(float(v["high"]) < 0 for v in verdicts.values()),
        verdicts=verdicts,
        rule={"metric": "log_loss", "block": 24, "margin": 0.0, "resamples": 2000},
        seed=seed,
    )


BASE = {"majority": 0.693, "last_move": 0.690, "logistic": 0.691, "lightgbm": 0.692}


def test_summary_gives_mean_sd_and_seed_counts_of_known_reports() -> None:
    reports = [
        _fold("BTC", "1", 42, model=0.686, baselines=BASE),  # -0.004 +- 0.004 vs last_move
        _fold("BTC", "1", 43, model=0.688, baselines=BASE, high=dict.fromkeys(BASE, -0.0001)),
        _fold("BTC", "1", 44, model=0.692, baselines=BASE),  # +0.002 against last_move
    ]

    (summary,) = summarise(reports)

    assert (summary.pair, summary.fold, summary.seeds, summary.n) == ("BTC", "1", (42, 43, 44), 3)
    assert summary.mean["model"]["log_loss"] == pytest.approx(0.6886667, abs=1e-7)
    # Sample sd of 0.686, 0.688, 0.692: sqrt((2.667^2 + 0.667^2 + 3.333^2) e-6 / 2).
    assert summary.sd["model"]["log_loss"] == pytest.approx(0.0030551, abs=1e-6)
    assert summary.sd["majority"]["log_loss"] == pytest.approx(0.0, abs=1e-12)
    assert summary.strongest_baseline == "last_move"
    against = summary.verdicts["last_move"]
    assert against["mean"] == pytest.approx((-0.004 - 0.002 + 0.002) / 3)
    assert against["high"] == pytest.approx((0.0 - 0.0001 + 0.006) / 3)
    # Seed 42's interval against last_move ends at 0.0 (not below), seed 43's below: one seed.
    assert against["better"] == 1
    assert against["worse"] == 0
    assert summary.verdicts["majority"]["better"] == 2  # -0.007, -0.005 below; +0.003 - 0.004 not
    assert summary.beats_seeds == 1  # only seed 43 beats every baseline


def test_summary_refuses_seeds_tested_on_different_rows() -> None:
    other = ("2023-07-17T00:00:00+00:00", "2023-10-08T00:00:00+00:00")
    reports = [
        _fold("BTC", "1", 42, model=0.686, baselines=BASE),
        _fold("BTC", "1", 43, model=0.686, baselines=BASE, window=other),
    ]
    with pytest.raises(ValueError, match="BTC fold 1: seed 43 tested 2023-07-17"):
        summarise(reports)


def _write_report(
    path: Path, settings: Settings, model_type: str, seeds: list[int], reports: list[FoldReport]
) -> Path:
    plan = EvaluationPlan.from_settings(
        settings, pairs=["BTC", "XMR"], model_type=model_type, folds=1, seeds=seeds
    )
    document = report_document(reports, plan=plan, settings=settings, elapsed=60.0, complete=True)
    path.write_text(json.dumps(document))
    return path


def _pooled(pair: str, seed: int, model: float, **kw: Any) -> list[FoldReport]:
    return [_fold(pair, fold, seed, model=model, baselines=BASE, **kw) for fold in ("1", "all")]


def test_combined_page_serves_the_lowest_loss_architecture_that_beats_on_most_seeds(
    settings: Settings, tmp_path: Path
) -> None:
    seeds = [42, 43, 44]
    # BTC: lstm beats every baseline on 2 of 3 seeds at 0.6850; gru has the lowest log loss
    # (0.6840) but beats them on 1 seed only; cnn beats them on 3 seeds at 0.6855.
    # XMR: nothing beats last_move on most seeds.
    lstm = [
        *_pooled("BTC", 42, 0.685),
        *_pooled("BTC", 43, 0.685),
        *_pooled("BTC", 44, 0.685, high={"last_move": 0.001}),
        *[r for s in seeds for r in _pooled("XMR", s, 0.6905)],
    ]
    gru = [
        *_pooled("BTC", 42, 0.684),
        *_pooled("BTC", 43, 0.684, high={"last_move": 0.002}),
        *_pooled("BTC", 44, 0.684, high={"logistic": 0.003}),
        *[r for s in seeds for r in _pooled("XMR", s, 0.6920)],
    ]
    cnn = [r for s in seeds for r in _pooled("BTC", s, 0.6855)] + [
        r for s in seeds for r in _pooled("XMR", s, 0.6895, high={"last_move": 0.0005})
    ]
    paths = [
        _write_report(tmp_path / f"{name}.json", settings, name, seeds, reports)
        for name, reports in (("lstm", lstm), ("gru", gru), ("cnn", cnn))
    ]

    choices = {pair: choose([load_report(p) for p in paths], pair) for pair in ("BTC", "XMR")}
    assert choices["BTC"].serve == "lstm"
    assert "beats every baseline on 2/3 seeds" in choices["BTC"].reason
    assert "also qualified, with a higher log loss on the newest window: cnn" in (
        choices["BTC"].reason
    )
    assert choices["XMR"].serve is None
    assert choices["XMR"].reason.startswith("none beats last_move (log loss 0.6900")
    assert "Nearest: cnn" in choices["XMR"].reason

    page = tmp_path / "docs" / "evaluation.md"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--combine",
            *map(str, paths),
            "--output",
            str(page),
            "--note",
            "Raw.",
        ],
    )
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "| BTC | lstm | beats every baseline on 2/3 seeds" in text
    assert "| XMR | nothing (HOLD) | none beats last_move" in text
    assert "- Raw." in text
    # The headline: the lowest log loss is gru's on BTC, yet lstm is served (gru beats on 1 seed).
    assert "| BTC | lstm | gru 0.6840 ± 0.0000 | last_move 0.6900 | last_move: " in text
    assert "| XMR | nothing (HOLD) | cnn 0.6895 ± 0.0000 | last_move 0.6900 | " in text
    assert "`tbml evaluate --all --model-type gru --folds 1 --test-size 2000 --epochs 8 " in text
    assert "--seeds 42,43,44`" in text
    # Per architecture: the summary row, a verdict per baseline, a row per seed.
    assert text.count("| BTC | all | ") == 3 * (1 + (len(PREDICTORS) - 1) + len(seeds))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "BTC", "--seeds", "4x"], "invalid seeds '4x': give whole numbers >= 0"),
        (["evaluate", "BTC", "--seeds", "42,42"], "each seed may appear only once"),
        (["evaluate", "BTC", "--seed", "1", "--seeds", "1,2"], "pass --seed or --seeds"),
        (["evaluate", "BTC", "ETH"], "name one PAIR or 'all', got BTC ETH"),
        (["evaluate", "--combine"], "--combine needs the JSON reports"),
    ],
)
def test_evaluate_refuses_bad_options_with_the_allowed_values(
    args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


def test_combine_refuses_what_is_not_a_report_and_two_reports_of_one_model(
    settings: Settings, tmp_path: Path
) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps([{"pair": "BTC", "fold": "all"}]))
    result = CliRunner().invoke(app, ["evaluate", "--combine", str(old)])
    assert result.exit_code == 2
    assert f"{old} is not a JSON report of `tbml evaluate`" in result.output

    first = _write_report(tmp_path / "a.json", settings, "lstm", [42], _pooled("BTC", 42, 0.685))
    second = _write_report(tmp_path / "b.json", settings, "lstm", [43], _pooled("BTC", 43, 0.685))
    with pytest.raises(ReportError, match="two reports of lstm"):
        combine_reports([first, second])
