"""The combined page: the choice on the earlier folds, its confirmation on the newest, the test
pooled over pairs, and what each pair serves, on hand-made reports whose answer is known.

The reports are written as `tbml evaluate` writes them (`progress_document`), from a world whose
true probability of "up" is known: a model type near the truth beats logistic regression, which
knows a fifth of it, which beats the base rate.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mlproject.baselines import Prediction
from mlproject.evaluate import EvaluationPlan, Progress, progress_document
from mlproject.evaluation_page import (
    POOLED,
    Forecaster,
    ReportError,
    combine_reports,
    compare,
    load_report,
    pooled_over_pairs,
    select,
)
from mlproject.evaluation_records import FoldReport, FoldRows, Key, fold_report, kept
from mlproject.scoring import score
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.scores import log_losses
from pipelines.settings import Settings
from tbml.cli import app

HOUR = 3600
START = 1_672_531_200  # 2023-01-01T00:00Z
PAIRS = ("BTC", "ETH")
FOLDS = 6


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()


def _world(hours: int, *, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per pair: candle times, true probabilities of "up" and outcomes. The pairs' hours
    differ: BTC lacks every 11th hour, ETH every 7th (unchanged closes, no sample)."""
    rng = np.random.default_rng(seed)
    out = {}
    for pair, every in zip(PAIRS, (11, 7), strict=True):
        times = START + HOUR * np.arange(hours, dtype=np.int64)
        truth = np.clip(0.5 + 0.15 * rng.standard_normal(hours), 0.05, 0.95)
        y = (rng.random(hours) < truth).astype(np.int8)
        keep = np.arange(hours) % every != every - 1
        out[pair] = (times[keep], truth[keep], y[keep])
    return out


World = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _rows(world: World, *, noise: dict[int, float], seed: int, rows: int) -> dict[Key, FoldRows]:
    """Per pair and fold, one seed's rows: the model is the truth plus noise of sd
    `noise[fold]` (a noise of 1 or more: the base rate, learnt nothing), majority says 0.5,
    logistic knows a fifth of the truth's departure from 0.5."""
    rng = np.random.default_rng(seed)
    out = {}
    for pair, (times, truth, y) in world.items():
        for fold in range(1, FOLDS + 1):
            at = (times >= START + (fold - 1) * rows * HOUR) & (times < START + fold * rows * HOUR)
            sd = noise[fold]
            model = np.clip(truth[at] + sd * rng.standard_normal(int(at.sum())), 0.02, 0.98)
            if sd >= 1:  # a model that learnt nothing: the base rate, a little noise
                model = 0.5 + 0.01 * rng.standard_normal(int(at.sum()))
            out[(pair, str(fold), seed)] = FoldRows(
                y=y[at],
                probas={
                    "model": model,
                    "majority": np.full(int(at.sum()), 0.5),
                    "logistic": 0.5 + 0.2 * (truth[at] - 0.5),
                },
                times=times[at],
            )
    return out


def _scored(key: Key, rows: FoldRows) -> FoldReport:
    pair, fold, seed = key
    scores = score(
        y=rows.y,
        model_proba=rows.probas["model"],
        baseline_predictions={
            name: Prediction(proba=p, pred=(p >= 0.5).astype(np.int8))
            for name, p in rows.probas.items()
            if name != "model"
        },
        returns=np.zeros(rows.y.size),
        settings=Settings(_env_file=None),
    )
    start, end = _iso(int(rows.times[0])), _iso(int(rows.times[-1]))
    return fold_report(pair, fold, scores, start=start, end=end, seed=seed)


def _report(
    path: Path,
    settings: Settings,
    model_type: str,
    rows: dict[Key, FoldRows],
    *,
    test_size: int,
    stopped: bool = False,
) -> Path:
    """A JSON report as `tbml evaluate` writes it, of the given rows."""
    seeds = sorted({key[2] for key in rows})
    plan = EvaluationPlan.from_settings(
        settings, pairs=list(PAIRS), model_type=model_type, test_size=test_size, seeds=seeds
    )
    progress = Progress()
    for key, each in rows.items():
        progress.add(key, _scored(key, each), kept(key, each))
    document = progress_document(
        progress, plan=plan, settings=settings, elapsed=60.0, stopped=stopped
    )
    path.write_text(json.dumps(document))
    return path


def test_pooling_averages_each_hour_over_the_pairs_that_have_it() -> None:
    per_pair = {
        "BTC": (np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3])),
        "ETH": (np.array([2, 3, 4]), np.array([0.4, 0.6, 0.8])),
    }

    hours, values = pooled_over_pairs(per_pair)

    # Hour 1 is BTC's alone and hour 4 ETH's alone: each counts once, with that pair's value.
    np.testing.assert_array_equal(hours, [1, 2, 3, 4])
    np.testing.assert_allclose(values, [0.1, 0.3, 0.45, 0.8])


def test_the_pooled_test_is_one_interval_over_the_hourly_means(
    settings: Settings, tmp_path: Path
) -> None:
    world = _world(FOLDS * 200, seed=0)
    rows = _rows(world, noise=dict.fromkeys(range(1, FOLDS + 1), 0.05), seed=1, rows=200)
    report = load_report(_report(tmp_path / "lstm.json", settings, "lstm", rows, test_size=200))

    compared = compare(Forecaster(report), Forecaster(report, "logistic"), list(PAIRS))

    # By hand: per hour, the mean over the pairs that have it of model minus logistic.
    by_hour: dict[int, list[float]] = {}
    for pair in PAIRS:
        for fold in range(1, FOLDS + 1):
            each = rows[(pair, str(fold), 1)]
            kept_rows = kept((pair, str(fold), 1), each)
            d = log_losses(kept_rows.probas["model"], each.y) - log_losses(
                kept_rows.probas["logistic"], each.y
            )
            for t, v in zip(each.times.tolist(), d.tolist(), strict=True):
                by_hour.setdefault(t, []).append(v)
    expected = paired_interval(np.array([np.mean(by_hour[t]) for t in sorted(by_hour)]))
    assert compared.pooled == expected
    # Every hour either pair has counts once: more hours than either pair, fewer than both.
    sizes = [compared.per_pair[p].rows for p in PAIRS]
    assert max(sizes) < compared.pooled.rows == len(by_hour) < sum(sizes)
    assert compared.pooled.high < 0  # near the truth beats a fifth of it


def test_the_choice_is_made_on_the_earlier_folds_and_confirmed_on_the_newest_only(
    settings: Settings, tmp_path: Path
) -> None:
    # A is near the truth on folds 1-4 and learnt nothing on 5-6; B the other way round. Had the
    # choice seen every fold, B would win: it is far better on the newest.
    world = _world(FOLDS * 300, seed=2)
    a_noise = {1: 0.05, 2: 0.05, 3: 0.05, 4: 0.05, 5: 9.0, 6: 9.0}
    b_noise = {1: 0.07, 2: 0.07, 3: 0.07, 4: 0.07, 5: 0.0, 6: 0.0}
    a_rows = _rows(world, noise=a_noise, seed=1, rows=300)
    paths = [
        _report(tmp_path / "a.json", settings, "A", a_rows, test_size=300),
        _report(
            tmp_path / "b.json",
            settings,
            "B",
            _rows(world, noise=b_noise, seed=1, rows=300),
            test_size=300,
        ),
    ]
    reports = [load_report(p) for p in paths]
    every = {
        r.model_type: [
            pooled.metrics["model"]["log_loss"] for p in PAIRS if (pooled := r.pooled(p))
        ]
        for r in reports
    }
    # The premise: over every fold, B is better on each pair.
    assert all(b < a for a, b in zip(every["A"], every["B"], strict=True))

    chosen = select(reports, list(PAIRS), confirm_folds=2)

    assert {scope: s.chosen for scope, s in chosen.items()} == {"BTC": "A", "ETH": "A", POOLED: "A"}
    btc = chosen["BTC"]
    assert (btc.choosing, btc.confirming) == ("folds 1-4", "folds 5-6")
    # The confirmation: A minus logistic on folds 5 and 6 only, by hand.
    newest = [kept(("BTC", f, 1), a_rows[("BTC", f, 1)]) for f in ("5", "6")]
    d = np.concatenate(
        [log_losses(r.probas["model"], r.y) - log_losses(r.probas["logistic"], r.y) for r in newest]
    )
    assert btc.confirmation["logistic"] == paired_interval(d)
    assert btc.confirmation["logistic"].low > 0  # A learnt nothing there: not confirmed
    assert btc.confirmed is False
    assert chosen[POOLED].confirmation["logistic"].rows < chosen[POOLED].all_folds["logistic"].rows

    page = combine_reports(paths)

    assert "**BTC** serves nothing by default (HOLD): A was chosen on folds 1-4, but its " in page
    assert "on folds 5-6 is +0." in page


def test_the_page_says_what_each_pair_serves_and_by_how_much(
    settings: Settings, tmp_path: Path
) -> None:
    world = _world(FOLDS * 2000, seed=3)
    good = _rows(world, noise=dict.fromkeys(range(1, 7), 0.05), seed=1, rows=2000)
    paths = [
        _report(tmp_path / "gru.json", settings, "gru", good, test_size=2000),
        _report(
            tmp_path / "logistic.json",
            settings,
            "logistic",
            _rows(world, noise=dict.fromkeys(range(1, 7), 9.0), seed=1, rows=2000),
            test_size=2000,
        ),
    ]
    page_path = tmp_path / "docs" / "evaluation.md"

    result = CliRunner().invoke(
        app, ["evaluate", "--combine", *map(str, paths), "--output", str(page_path)]
    )

    assert result.exit_code == 0, result.output
    text = page_path.read_text()
    for heading in (
        "## What each pair serves",
        "## Chosen on the earlier folds, confirmed on the newest",
        "## Pooled over pairs",
        "## The lowest log loss on the newest window",
        "## gru: every fold",
    ):
        assert f"\n{heading}\n" in text
    # Six folds of 2,000 test hours each, per pair and type.
    assert "| gru | 12,000 (6 folds; " in text
    assert "| logistic | 12,000 (6 folds; " in text
    assert (
        "**BTC** serves gru by default (chosen on folds 1-4, confirmed on folds 5-6). Over its 6 "
        "folds (12,000 test hours" in text
    )
    assert "its log loss is below majority's by 0.0" in text
    assert "| pooled | per pair, as above | " in text
    assert "| gru - logistic | -0.0" in text  # the type against the type, pooled
    assert "| gru - logistic (baseline) | -0.0" in text
    assert "| gru - majority (baseline) | -0.0" in text

    served = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--combine",
            *map(str, paths),
            "--output",
            str(page_path),
            "--served",
            "logistic",
        ],
    )
    assert served.exit_code == 0, served.output
    text = page_path.read_text()
    assert "**BTC** serves logistic by default (as `--served logistic` asks)" in text
    # The model type "logistic" learnt nothing here: it beats neither baseline, and says so.
    assert "(12,000 test hours, 10,910 scored) it does not beat majority (-0.0001 [" in text


def test_combine_refuses_what_is_not_a_report_two_of_one_type_and_an_unknown_served_type(
    settings: Settings, tmp_path: Path
) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps([{"pair": "BTC", "fold": "all"}]))
    result = CliRunner().invoke(app, ["evaluate", "--combine", str(old)])
    assert result.exit_code == 2
    assert f"{old} is not a JSON report of `tbml evaluate`" in result.output

    world = _world(FOLDS * 50, seed=4)
    rows = _rows(world, noise=dict.fromkeys(range(1, 7), 0.1), seed=1, rows=50)
    first = _report(tmp_path / "a.json", settings, "lstm", rows, test_size=50)
    second = _report(tmp_path / "b.json", settings, "lstm", rows, test_size=50)
    with pytest.raises(ReportError, match="two reports of lstm"):
        combine_reports([first, second])
    with pytest.raises(
        ReportError, match="--served blend: no report of it; the reports are of lstm"
    ):
        combine_reports([first], served="blend")

    document = json.loads(first.read_text())
    del document["rows"]
    first.write_text(json.dumps(document))
    with pytest.raises(ReportError, match="written before reports kept their rows"):
        load_report(first)
    for summary in document["summary"]:
        del summary["seed_sd"]
    first.write_text(json.dumps(document))
    with pytest.raises(ReportError, match="written before seeds were ensembled"):
        load_report(first)
