"""Walk-forward evaluation: folds, seed ensembles, intervals, the report, its resumption and
budget, the MLflow run.

The slow tests run it on a slice of real candles; the others judge hand-made forecasters whose
answer is known. The combined page has its own tests (test_evaluation_page.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from mlproject.baselines import Prediction
from mlproject.evaluate import EvaluationPlan, ResumeError, evaluate, report_document
from mlproject.evaluation_page import combine_reports
from mlproject.evaluation_records import (
    PREDICTORS,
    FoldReport,
    FoldRows,
    ensemble,
    fold_report,
    kept,
    record_rows,
    rows_record,
    summaries_of,
    summarise,
)
from mlproject.evaluation_text import render_markdown
from mlproject.scoring import score
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.scores import log_loss, log_losses
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
    assert "Newey-West t-interval" in text
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
    assert sorted(m.step for m in history) == [1, 2]
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
    assert pooled["seed_mean"]["model"]["log_loss"] == pytest.approx(sum(losses) / 2)
    sd = abs(losses[0] - losses[1]) / 2**0.5
    assert pooled["seed_sd"]["model"]["log_loss"] == pytest.approx(sd)
    # The ensemble of the two seeds' probabilities scores at most their mean log loss (convexity).
    ensembled = pooled["metrics"]["model"]["log_loss"]
    assert ensembled <= sum(losses) / 2 + 1e-12
    assert "sd over seeds" in path.read_text()

    client = MlflowClient(small.tracking_uri)
    experiment = client.get_experiment_by_name(small.evaluation_experiment_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["seeds"] == "1,2"
    assert run.data.metrics["seed2/BTC/model/log_loss_pooled"] == losses[1]
    assert run.data.metrics["BTC/model/log_loss_mean_pooled"] == pytest.approx(sum(losses) / 2)
    assert run.data.metrics["BTC/beats_seeds_pooled"] == pooled["beats_seeds"]
    assert run.data.metrics["BTC/ensemble/model/log_loss_pooled"] == pytest.approx(ensembled)
    assert run.data.metrics["BTC/ensemble/beats_pooled"] == float(pooled["beats_baseline"])


# Seed ensembles and the combined page, on forecasters whose answer is known: a world whose true
# probability of "up" is known, seeds that are the truth plus independent noise (so the seeds'
# average is closer to the truth than any one seed), and baselines that know less of it.

ROWS = 2000
SEEDS = (42, 43, 44)
WINDOW = ("2023-10-08T00:00:00+00:00", "2023-12-30T17:00:00+00:00")


def _world(signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities of "up" 0.5 +- `signal` (sd), and outcomes drawn from them."""
    rng = np.random.default_rng(seed)
    truth = np.clip(0.5 + signal * rng.standard_normal(ROWS), 0.05, 0.95)
    return truth, (rng.random(ROWS) < truth).astype(np.int8)


def _seed_rows(
    truth: np.ndarray, y: np.ndarray, *, noise: float, seed: int, rows: slice = slice(None)
) -> FoldRows:
    """One seed's rows: the model is the truth plus noise of sd `noise` drawn under `seed`;
    majority says 0.5, logistic knows a fifth of the truth's departure from 0.5."""
    model = np.clip(truth + noise * np.random.default_rng(seed).standard_normal(ROWS), 0.02, 0.98)
    probas = {"model": model, "majority": np.full(ROWS, 0.5), "logistic": 0.5 + 0.2 * (truth - 0.5)}
    return FoldRows(y=y[rows], probas={k: v[rows] for k, v in probas.items()})


def _scored(pair: str, fold: str, seed: int, rows: FoldRows) -> FoldReport:
    """The seed's report, scored as a fold of `walk_forward` is."""
    predictions = {
        name: Prediction(proba=p, pred=(p >= 0.5).astype(np.int8))
        for name, p in rows.probas.items()
        if name != "model"
    }
    scores = score(
        y=rows.y,
        model_proba=rows.probas["model"],
        baseline_predictions=predictions,
        returns=np.zeros(rows.y.size),
        settings=Settings(_env_file=None),
    )
    return fold_report(pair, fold, scores, start=WINDOW[0], end=WINDOW[1], seed=seed)


Evaluated = tuple[list[FoldReport], dict[tuple[str, str, int], FoldRows]]


def _evaluated(pair: str, truth: np.ndarray, y: np.ndarray, *, noise: float) -> Evaluated:
    """Fold 1 and fold `all` (one fold: the same rows) of `pair` under every seed of SEEDS."""
    reports, rows = [], {}
    for seed in SEEDS:
        each = _seed_rows(truth, y, noise=noise, seed=seed)
        for fold in ("1", "all"):
            reports.append(_scored(pair, fold, seed, each))
            rows[(pair, fold, seed)] = each
    return reports, rows


def test_the_seed_ensemble_averages_the_probabilities_and_is_judged_once() -> None:
    truth, y = _world(0.15, seed=0)
    reports, rows = _evaluated("BTC", truth, y, noise=0.12)

    summary = summarise(reports, rows)[0]

    average = np.mean([rows[("BTC", "1", s)].probas["model"] for s in SEEDS], axis=0)
    assert summary.metrics["model"]["log_loss"] == pytest.approx(log_loss(average, y), abs=1e-12)
    expected = paired_interval(log_losses(average, y) - log_losses(np.full(ROWS, 0.5), y))
    assert summary.verdicts["majority"] == expected.to_dict()
    # No seed alone shows it beats majority; their average, closer to the truth, does.
    assert summary.seed_verdicts["majority"] == {"better": 0, "worse": 0}
    assert summary.beats_seeds == 0
    assert summary.beats_baseline is True
    assert summary.strongest_baseline == "logistic"
    # The spread is the seeds' own log losses', apart from the ensemble's.
    each = [log_loss(rows[("BTC", "1", s)].probas["model"], y) for s in SEEDS]
    assert summary.seed_mean["model"]["log_loss"] == pytest.approx(np.mean(each))
    assert summary.seed_sd["model"]["log_loss"] == pytest.approx(np.std(each, ddof=1))
    assert summary.metrics["model"]["log_loss"] < min(each)
    low, high = summary.intervals["model"]["log_loss"]
    assert (low, high) == pytest.approx(
        (
            paired_interval(log_losses(average, y)).low,
            paired_interval(log_losses(average, y)).high,
        )
    )
    # Deterministic baselines are the same under every seed and kept as they are.
    assert summary.metrics["majority"]["log_loss"] == pytest.approx(math.log(2))


def test_the_pooled_fold_pools_the_per_row_differences_into_one_interval() -> None:
    truth, y = _world(0.15, seed=0)
    reports, rows = [], {}
    halves = {"1": slice(0, 600), "2": slice(600, None)}
    for seed in SEEDS:
        whole = _seed_rows(truth, y, noise=0.12, seed=seed)
        for fold, part in halves.items():
            each = _seed_rows(truth, y, noise=0.12, seed=seed, rows=part)
            reports.append(_scored("BTC", fold, seed, each))
            rows[("BTC", fold, seed)] = each
        reports.append(_scored("BTC", "all", seed, whole))
        rows[("BTC", "all", seed)] = whole

    first, second, pooled = summarise(reports, rows)

    average = np.mean([rows[("BTC", "all", s)].probas["model"] for s in SEEDS], axis=0)
    expected = paired_interval(log_losses(average, y) - log_losses(np.full(ROWS, 0.5), y))
    assert pooled.fold == "all"
    assert pooled.verdicts["majority"] == expected.to_dict()
    # Not the folds' endpoints averaged: that has no coverage meaning, and differs here.
    averaged = sum(float(s.verdicts["majority"]["high"]) for s in (first, second)) / 2
    assert abs(float(pooled.verdicts["majority"]["high"]) - averaged) > 1e-3


def test_ensemble_refuses_rows_of_different_windows() -> None:
    truth, y = _world(0.15, seed=0)
    one = _seed_rows(truth, y, noise=0.1, seed=1)
    other = FoldRows(y=1 - one.y, probas=one.probas)
    with pytest.raises(ValueError, match="the seeds' outcomes differ"):
        ensemble([one, other])


def test_summary_refuses_seeds_tested_on_different_rows() -> None:
    truth, y = _world(0.15, seed=0)
    reports, rows = _evaluated("BTC", truth, y, noise=0.12)
    moved = replace(reports[2], test_start="2023-07-17T00:00:00+00:00")
    with pytest.raises(ValueError, match="BTC fold 1: seed 43 tested 2023-07-17"):
        summarise([reports[0], moved], rows)


def test_the_json_report_gives_back_the_summaries_it_was_written_with(settings: Settings) -> None:
    truth, y = _world(0.15, seed=0)
    reports, rows = _evaluated("BTC", truth, y, noise=0.12)
    plan = EvaluationPlan.from_settings(settings, pairs=["BTC"], folds=1, seeds=list(SEEDS))

    document = report_document(
        reports, rows, plan=plan, settings=settings, elapsed=60.0, complete=True
    )
    again = json.loads(json.dumps(document))

    assert summaries_of(again) == summarise(reports, rows)
    text = render_markdown(again)
    assert "Seeds ensembled" in text
    assert "Newey-West" in text
    assert "| BTC | 1 | 2023-10-08 .. 2023-12-30 | 2000 | 3 | " in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "BTC", "--seeds", "4x"], "invalid seeds '4x': give whole numbers >= 0"),
        (["evaluate", "BTC", "--seeds", "42,42"], "each seed may appear only once"),
        (["evaluate", "BTC", "--seed", "1", "--seeds", "1,2"], "pass --seed or --seeds"),
        (["evaluate", "BTC", "ETH"], "name one PAIR or 'all', got BTC ETH"),
        (["evaluate", "--combine"], "--combine needs the JSON reports"),
        (["evaluate", "BTC", "--budget-minutes", "-1"], "budget_minutes must be >= 0"),
    ],
)
def test_evaluate_refuses_bad_options_with_the_allowed_values(
    args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


def test_the_plan_defaults_to_six_folds_of_2000_hours_and_the_training_as_deployed(
    settings: Settings,
) -> None:
    plan = EvaluationPlan.from_settings(settings, pairs=["BTC"])

    assert (plan.folds, plan.test_size, plan.max_rows, plan.budget_minutes) == (6, 2000, 0, 90)
    assert (plan.epochs, plan.patience) == (settings.epochs, settings.early_stopping_patience)
    explicit = EvaluationPlan.from_settings(settings, pairs=["BTC"], folds=1, test_size=50)
    assert (explicit.folds, explicit.test_size) == (1, 50)
    # Seeds outermost, then the newest fold first, then pairs: a budget cut leaves every pair the
    # same newest folds.
    order = EvaluationPlan(pairs=("BTC", "ETH"), folds=2, seeds=(1, 2)).schedule()
    assert list(order)[:4] == [("BTC", "2", 1), ("ETH", "2", 1), ("BTC", "1", 1), ("ETH", "1", 1)]


def test_the_report_keeps_each_rows_time_outcome_and_probabilities() -> None:
    rows = FoldRows(
        y=np.array([1, 0, 1], dtype=np.int8),
        probas={"model": np.array([0.123456789, 3e-9, 0.5]), "majority": np.full(3, 0.52)},
        times=np.array([1_700_000_000, 1_700_003_600, 1_700_010_800], dtype=np.int64),
    )

    key, back = record_rows(json.loads(json.dumps(rows_record(("BTC", "3", 42), rows))))

    assert key == ("BTC", "3", 42)
    np.testing.assert_array_equal(back.times, rows.times)
    np.testing.assert_array_equal(back.y, rows.y)
    for name, proba in rows.probas.items():
        np.testing.assert_allclose(back.probas[name], proba, rtol=1e-6)
    # What the report keeps reads back as itself: a resumed report equals an uninterrupted one.
    again = kept(key, back)
    assert all(np.array_equal(again.probas[n], back.probas[n]) for n in rows.probas)


@pytest.mark.slow
def test_a_run_its_budget_stops_resumes_without_fitting_a_fold_again(
    settings: Settings, tmp_path: Path
) -> None:
    small = settings.model_copy(update={"sequence_length": 12, "lstm_units": 4, "lstm_layers": 1})
    plan = EvaluationPlan.from_settings(
        small, pairs=["btc"], folds=2, test_size=50, epochs=1, max_rows=600, budget_minutes=1e-4
    )
    out = tmp_path / "reports"
    fitted: list[FoldReport] = []

    _, path = evaluate(plan, settings=small, output_dir=out, on_fold=fitted.append)

    # The budget (6 ms) is spent during the first fold, the newest: no other fold starts.
    assert [r.fold for r in fitted] == ["2"]
    document = json.loads(path.with_suffix(".json").read_text())
    assert (document["complete"], document["stopped"]) == (False, "budget")
    assert document["folds_got"] == {"BTC": {"2": [42]}}
    assert "stopped when its budget of 0.0001 min was spent" in path.read_text()
    page = combine_reports([path.with_suffix(".json")])
    assert "stopped when its budget of 0.0001 min was spent; it got BTC folds 2 (seed 42)" in page
    newest = next(f for f in document["folds"] if f["fold"] == "2")

    reports, path = evaluate(
        replace(plan, budget_minutes=0), settings=small, output_dir=out, on_fold=fitted.append
    )

    assert [r.fold for r in fitted] == ["2", "1"]  # fold 2 kept, not fitted again
    assert [(r.fold, r.seed) for r in reports] == [("1", 42), ("2", 42), ("all", 42)]
    document = json.loads(path.with_suffix(".json").read_text())
    assert (document["complete"], document["stopped"]) == (True, None)
    assert next(f for f in document["folds"] if f["fold"] == "2") == newest
    assert [(r["fold"], len(r["y"])) for r in document["rows"]] == [
        ("1", reports[0].rows),
        ("2", reports[1].rows),
    ]
    assert reports[2].rows == reports[0].rows + reports[1].rows
    with pytest.raises(ResumeError, match=r"test_size 50 \(now 60\); pass --fresh"):
        evaluate(replace(plan, test_size=60), settings=small, output_dir=out)


@pytest.mark.slow
def test_a_feature_set_is_evaluated_under_its_own_name_and_the_page_tells_how(
    settings: Settings, tmp_path: Path
) -> None:
    plan = EvaluationPlan.from_settings(
        settings,
        pairs=["ETH"],
        model_type="lightgbm",
        feature_set="cross",
        folds=2,
        test_size=50,
        max_rows=900,
    )
    assert plan.label == "lightgbm-cross"
    out = tmp_path / "reports"

    _, path = evaluate(plan, settings=settings, output_dir=out)

    assert path.name == "walk_forward_lightgbm-cross.md"
    document = json.loads(path.with_suffix(".json").read_text())
    assert document["plan"]["feature_set"] == "cross"
    page = combine_reports([path.with_suffix(".json")])
    assert "**lightgbm-cross**" in page
    assert "--model-type lightgbm --folds 2" in page
    assert "--feature-set cross" in page
    # A report of the default features is another evaluation: it does not resume this one.
    default = replace(plan, feature_set="default")
    assert default.label == "lightgbm"
    with pytest.raises(ValueError, match="unknown feature set 'fancy': expected one of default"):
        replace(plan, feature_set="fancy")
    # A report written before plans named their feature set resumes as the default set.
    old = json.loads(path.with_suffix(".json").read_text())
    del old["plan"]["feature_set"]
    old["plan"]["model_type"] = "lightgbm"
    (out / "walk_forward_lightgbm.json").write_text(json.dumps(old))
    with pytest.raises(ResumeError) as refused:
        evaluate(replace(default, test_size=60), settings=settings, output_dir=out)
    assert "test_size 50 (now 60)" in str(refused.value)
    assert "(now 'default')" not in str(refused.value)
