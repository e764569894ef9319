"""Walk-forward evaluation: k expanding folds per pair, the model against every baseline.

Fold i trains on everything before its test window (less the purge gaps and the validation part)
and tests on the next `test_size` samples; the last fold's window ends at the newest candle.
Each fold goes through the same `fit_and_score` as a training run, once per seed of the plan
(the model's initialisation, dropout and shuffling; the fitted baselines take the same seed, which
only LightGBM's column sampling uses). Intervals are the lifecycle's (`mlproject.metrics`):
Wilson for accuracy, a Newey-West t-interval of the mean per-row loss for log loss; ROC AUC is a
point estimate. `beats` is the training run's paired verdict (`mlproject.scoring.judge`): per-row
log-loss differences, model minus each baseline on the same rows, through `paired_interval`.
Fold `all` pools a seed's folds: the per-row differences of every fold, one interval.

Over several seeds, `summarise` ensembles them: per pair and fold, each predictor's probability
of "up" is averaged over the seeds row by row, and the ensemble is scored and judged once (one
paired interval against each baseline). The seeds' spread (mean and standard deviation of each
seed's own metrics, and how many seeds alone beat every baseline) is reported beside it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from mlproject.baselines import BASELINES, Prediction
from mlproject.config import TrainConfig
from mlproject.data import walk_forward_splits
from mlproject.metrics import classification_metrics, metric_intervals
from mlproject.scoring import MODEL, Scores, VerdictRule, judge, score
from mlproject.tracking import active_run
from pipelines.lifecycle.scores import log_loss
from pipelines.pairs import check_pair
from pipelines.settings import Settings

logger = logging.getLogger(__name__)

PREDICTORS: tuple[str, ...] = (MODEL, *BASELINES)


@dataclass(frozen=True)
class EvaluationPlan:
    """What to evaluate and how long it may take."""

    pairs: tuple[str, ...]
    model_type: str = "lstm"
    folds: int = 3
    test_size: int = 2000
    epochs: int = 8
    patience: int = 3
    seeds: tuple[int, ...] = (42,)
    max_rows: int = 0

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("an evaluation needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, got {','.join(map(str, self.seeds))}")

    @property
    def seed(self) -> int:
        """The first seed (the only one of a one-seed plan)."""
        return self.seeds[0]

    @classmethod
    def from_settings(
        cls, settings: Settings, *, pairs: list[str], **overrides: Any
    ) -> EvaluationPlan:
        """A plan with the settings' walk-forward defaults; `seed=` is a one-seed `seeds=`."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "seed" in given:
            if "seeds" in given:
                raise ValueError("give seed or seeds, not both")
            given["seeds"] = (given.pop("seed"),)
        if "seeds" in given:
            given["seeds"] = tuple(int(s) for s in given["seeds"])
        return cls(
            pairs=tuple(check_pair(p, settings.pairs) for p in pairs),
            folds=given.pop("folds", settings.walk_forward_folds),
            test_size=given.pop("test_size", settings.walk_forward_test_size),
            epochs=given.pop("epochs", settings.walk_forward_epochs),
            patience=given.pop("patience", settings.walk_forward_patience),
            **given,
        )


def parse_seeds(text: str) -> tuple[int, ...]:
    """`"42,43,44"` -> (42, 43, 44): whole numbers >= 0, comma-separated, each once."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(part.isdigit() for part in parts):
        raise ValueError(
            f"invalid seeds {text!r}: give whole numbers >= 0 separated by commas, e.g. 42,43,44"
        )
    seeds = tuple(int(part) for part in parts)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"invalid seeds {text!r}: each seed may appear only once")
    return seeds


@dataclass(frozen=True)
class FoldReport:
    """One test window: every predictor's metrics and intervals on the same rows."""

    pair: str
    fold: str
    test_start: str
    test_end: str
    rows: int
    metrics: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, tuple[float, float]]]
    strongest_baseline: str
    beats_baseline: bool
    # Model minus each baseline, log loss per row: `PairedVerdict.to_dict()`.
    verdicts: dict[str, dict[str, float | int | str]] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)  # `VerdictRule.to_dict()`
    seed: int = 42
    epochs_run: int = 0
    best_epoch: int = 0
    fit_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FoldRows:
    """One test window's rows under one seed, in time order: the outcomes and every predictor's
    probability of "up"."""

    y: np.ndarray
    probas: dict[str, np.ndarray]


@dataclass(frozen=True)
class WalkForward:
    """One pair under one seed: a report per fold and fold `all`, and the rows of each."""

    reports: list[FoldReport]
    rows: dict[str, FoldRows]  # fold -> its rows


def fold_report(
    pair: str, fold: str, scores: Scores, *, start: str, end: str, seed: int
) -> FoldReport:
    """One seed's report of a test window from its scores."""
    y = scores.y
    return FoldReport(
        pair=pair,
        fold=fold,
        test_start=start,
        test_end=end,
        rows=int(y.size),
        metrics=scores.metrics,
        intervals={
            name: metric_intervals(y_true=y, proba=p.proba, pred=p.pred)
            for name, p in scores.predictions.items()
        },
        strongest_baseline=scores.strongest_baseline,
        beats_baseline=scores.beats_baseline,
        verdicts={name: v.to_dict() for name, v in scores.judgement.verdicts.items()},
        rule=scores.rule.to_dict(),
        seed=seed,
    )


def walk_forward(
    pair: str,
    *,
    plan: EvaluationPlan,
    settings: Settings,
    seed: int | None = None,
    on_fold: Callable[[FoldReport], None] | None = None,
) -> WalkForward:
    """Every fold of `pair` for one seed (the plan's first by default), then the folds pooled
    (fold "all")."""
    # TensorFlow comes in with the fold, here and not on import: `--combine` never needs it.
    from mlproject.fold import fit_and_score
    from mlproject.train import load_dataset

    seed = plan.seed if seed is None else seed
    config = TrainConfig.from_settings(
        settings, pair=pair, model_type=plan.model_type, epochs=plan.epochs, seed=seed
    )
    fold_settings = settings.model_copy(update={"early_stopping_patience": plan.patience})
    dataset = load_dataset(config, settings=settings, max_rows=plan.max_rows)
    splits = walk_forward_splits(
        dataset,
        folds=plan.folds,
        test_size=plan.test_size,
        val_fraction=settings.validation_fraction,
    )
    index = dataset.candles.index
    reports: list[FoldReport] = []
    rows: dict[str, FoldRows] = {}
    pooled: dict[str, list[np.ndarray]] = {}
    for number, split in enumerate(splits, start=1):
        result = fit_and_score(dataset, split, config=config, settings=fold_settings)
        report = fold_report(
            pair,
            str(number),
            result.scores,
            start=index[split.test.start].isoformat(),
            end=index[split.test.stop - 1].isoformat(),
            seed=seed,
        )
        report = replace(
            report,
            epochs_run=result.fit.epochs_run,
            best_epoch=result.fit.best_epoch,
            fit_seconds=result.fit.fit_seconds,
            extra=_calibration(result, y=result.scores.y),
        )
        reports.append(report)
        rows[report.fold] = FoldRows(
            y=result.scores.y,
            probas={name: p.proba for name, p in result.scores.predictions.items()},
        )
        pooled.setdefault("y", []).append(result.scores.y)
        for name, prediction in result.scores.predictions.items():
            pooled.setdefault(f"{name}.proba", []).append(prediction.proba)
            pooled.setdefault(f"{name}.pred", []).append(prediction.pred)
        logger.info(
            "%s fold %d seed %d: model accuracy %.4f, log loss %.4f (%s: %.4f), %.0f s",
            pair,
            number,
            seed,
            report.metrics[MODEL]["accuracy"],
            report.metrics[MODEL]["log_loss"],
            report.strongest_baseline,
            report.metrics[report.strongest_baseline]["log_loss"],
            report.fit_seconds,
        )
        if on_fold is not None:
            on_fold(report)
    reports.append(_pooled(pair, reports, pooled, settings=settings, seed=seed))
    rows["all"] = FoldRows(
        y=np.concatenate(pooled["y"]),
        probas={name: np.concatenate(pooled[f"{name}.proba"]) for name in PREDICTORS},
    )
    return WalkForward(reports=reports, rows=rows)


def _calibration(result: object, *, y: np.ndarray) -> dict[str, Any]:
    """How the fold's test probabilities were calibrated, and the model's log loss before it
    (empty for a fold without calibration)."""
    calibration, raw = getattr(result, "calibration", None), getattr(result, "raw_proba", None)
    if calibration is None or raw is None:
        return {}
    return {
        "calibration": calibration.to_dict(),
        "raw_log_loss": log_loss(np.asarray(raw, dtype=np.float64), y),
    }


def calibration_line(reports: list[FoldReport]) -> str:
    """One sentence: which calibrator the folds chose, and the model's log loss before and after."""
    folds = [r for r in reports if r.fold != "all"]
    chosen = [r.extra["calibration"]["method"] for r in folds if "calibration" in r.extra]
    if not chosen:
        return "Test probabilities uncalibrated: the model's own."
    counts = ", ".join(f"{m} on {chosen.count(m)}" for m in sorted(set(chosen)))
    before = [float(r.extra["raw_log_loss"]) for r in folds if "raw_log_loss" in r.extra]
    after = [r.metrics[MODEL]["log_loss"] for r in folds if "raw_log_loss" in r.extra]
    return (
        f"Test probabilities calibrated on each fold's validation rows (ML_CALIBRATION): {counts} "
        f"of {len(folds)} fold x seed fits; the model's test log loss, mean over them, "
        f"{sum(before) / len(before):.4f} before calibration and {sum(after) / len(after):.4f} "
        "after (the figures below)."
    )


def _pooled(
    pair: str,
    folds: list[FoldReport],
    pooled: dict[str, list[np.ndarray]],
    *,
    settings: Settings,
    seed: int,
) -> FoldReport:
    y = np.concatenate(pooled["y"])
    predictions = {
        name: Prediction(
            proba=np.concatenate(pooled[f"{name}.proba"]),
            pred=np.concatenate(pooled[f"{name}.pred"]),
        )
        for name in PREDICTORS
    }
    scores = score(
        y=y,
        model_proba=predictions[MODEL].proba,
        baseline_predictions={k: v for k, v in predictions.items() if k != MODEL},
        returns=np.zeros(y.size),
        settings=settings,
    )
    return fold_report(
        pair, "all", scores, start=folds[0].test_start, end=folds[-1].test_end, seed=seed
    )


@dataclass(frozen=True)
class SeedSummary:
    """One pair and fold over every seed: the seed ensemble judged once, and the seeds' spread.

    The ensemble's probability of "up" is each predictor's probability averaged over the seeds,
    row by row; its metrics, intervals and paired verdicts are computed on those averages.
    """

    pair: str
    fold: str
    test_start: str
    test_end: str
    rows: int
    seeds: tuple[int, ...]
    metrics: dict[str, dict[str, float]]  # the ensemble's: predictor -> metric -> value
    intervals: dict[str, dict[str, tuple[float, float]]]  # the ensemble's (`metric_intervals`)
    # The ensemble's model minus each baseline, log loss per row: `PairedVerdict.to_dict()`.
    verdicts: dict[str, dict[str, float | int | str]]
    strongest_baseline: str  # the baseline of lowest ensemble log loss
    beats_baseline: bool  # every interval of `verdicts` lies wholly below -margin
    margin: float
    # The spread of the seeds taken one by one: each metric's mean and sample standard deviation
    # (n - 1; NaN for one seed) over the seeds' own reports.
    seed_mean: dict[str, dict[str, float]]
    seed_sd: dict[str, dict[str, float]]
    # Per baseline, how many seeds' own intervals lie wholly below -margin ("better") or above
    # +margin ("worse"); and on how many seeds the model alone beats every baseline.
    seed_verdicts: dict[str, dict[str, int]]
    beats_seeds: int

    @property
    def n(self) -> int:
        return len(self.seeds)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def ensemble(rows: list[FoldRows]) -> FoldRows:
    """The seeds' rows of one test window averaged row by row, per predictor.

    A predictor whose probabilities every seed gives alike (a deterministic baseline) keeps them
    as they are.

    Raises:
        ValueError: when the seeds' outcomes or predictors differ (not the same rows).
    """
    if not rows:
        raise ValueError("an ensemble needs the rows of at least one seed")
    first = rows[0]
    for other in rows[1:]:
        if not np.array_equal(other.y, first.y):
            raise ValueError(
                f"the seeds' outcomes differ ({other.y.size} and {first.y.size} rows): an "
                "ensemble averages one window's rows"
            )
        if set(other.probas) != set(first.probas):
            raise ValueError(
                f"the seeds' predictors differ: {sorted(other.probas)} and {sorted(first.probas)}"
            )
    probas = {}
    for name in first.probas:
        each = [np.asarray(r.probas[name], dtype=np.float64) for r in rows]
        same = all(np.array_equal(p, each[0]) for p in each[1:])
        probas[name] = each[0] if same else np.mean(np.stack(each), axis=0)
    return FoldRows(y=first.y, probas=probas)


def summarise(
    reports: list[FoldReport], rows: dict[tuple[str, str, int], FoldRows]
) -> list[SeedSummary]:
    """Group per-seed fold reports by (pair, fold), in their order; judge each group's seed
    ensemble (from `rows`, keyed by pair, fold and seed) and give the seeds' spread.

    Raises:
        ValueError: when one pair and fold was tested on different rows under different seeds,
            one seed appears twice for it, or a report's rows are missing.
    """
    groups: dict[tuple[str, str], list[FoldReport]] = {}
    for report in reports:
        groups.setdefault((report.pair, report.fold), []).append(report)
    summaries = []
    for (pair, fold), group in groups.items():
        first = group[0]
        seeds = tuple(r.seed for r in group)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{pair} fold {fold}: seed reported twice in {seeds}")
        for other in group[1:]:
            if (other.test_start, other.test_end, other.rows) != (
                first.test_start,
                first.test_end,
                first.rows,
            ):
                raise ValueError(
                    f"{pair} fold {fold}: seed {other.seed} tested {other.test_start} .. "
                    f"{other.test_end} ({other.rows} rows), seed {first.seed} "
                    f"{first.test_start} .. {first.test_end} ({first.rows} rows)"
                )
        missing = [seed for seed in seeds if (pair, fold, seed) not in rows]
        if missing:
            raise ValueError(f"{pair} fold {fold}: no rows of seeds {missing}")
        together = ensemble([rows[(pair, fold, seed)] for seed in seeds])
        rule = VerdictRule.from_dict(first.rule) if first.rule else VerdictRule(margin=0.0)
        judgement = judge(together.y, together.probas, rule=rule)
        seed_mean: dict[str, dict[str, float]] = {}
        seed_sd: dict[str, dict[str, float]] = {}
        for name, metrics in first.metrics.items():
            seed_mean[name], seed_sd[name] = {}, {}
            for metric in metrics:
                seed_mean[name][metric], seed_sd[name][metric] = _mean_sd(
                    [float(r.metrics[name][metric]) for r in group]
                )
        seed_verdicts = {
            name: {
                "better": sum(float(r.verdicts[name]["high"]) < -rule.margin for r in group),
                "worse": sum(float(r.verdicts[name]["low"]) > rule.margin for r in group),
            }
            for name in first.verdicts
        }
        summaries.append(
            SeedSummary(
                pair=pair,
                fold=fold,
                test_start=first.test_start,
                test_end=first.test_end,
                rows=first.rows,
                seeds=seeds,
                metrics={
                    name: classification_metrics(y_true=together.y, proba=proba)
                    for name, proba in together.probas.items()
                },
                intervals={
                    name: metric_intervals(y_true=together.y, proba=proba)
                    for name, proba in together.probas.items()
                },
                verdicts={name: v.to_dict() for name, v in judgement.verdicts.items()},
                strongest_baseline=judgement.strongest_baseline,
                beats_baseline=judgement.beats_baseline,
                margin=rule.margin,
                seed_mean=seed_mean,
                seed_sd=seed_sd,
                seed_verdicts=seed_verdicts,
                beats_seeds=sum(r.beats_baseline for r in group),
            )
        )
    return summaries


def evaluate(
    plan: EvaluationPlan, *, settings: Settings, output_dir: Path
) -> tuple[list[FoldReport], Path]:
    """Walk forward over every pair and seed of `plan`; write and log the report; return the
    per-seed fold reports and the report's path.

    The report (markdown and JSON) is rewritten after each pair and seed, marked incomplete
    until the last, so an interrupted evaluation leaves what it finished: its summaries ensemble
    the seeds finished so far.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"walk_forward_{plan.model_type}.md"
    with active_run(
        settings,
        experiment=settings.evaluation_experiment_name,
        run_name=f"walk-forward-{plan.model_type}",
    ):
        if not _resumed():
            mlflow.log_params(
                {
                    "pairs": ",".join(plan.pairs),
                    "model_type": plan.model_type,
                    "folds": plan.folds,
                    "test_size": plan.test_size,
                    "epochs": plan.epochs,
                    "patience": plan.patience,
                    "seed": plan.seed,
                    "max_rows": plan.max_rows,
                }
            )
        mlflow.log_param("seeds", ",".join(map(str, plan.seeds)))
        started = time.perf_counter()
        reports: list[FoldReport] = []
        rows: dict[tuple[str, str, int], FoldRows] = {}
        # Seeds outermost: an interrupted evaluation has every pair at its first seeds.
        for seed in plan.seeds:
            for pair in plan.pairs:
                done = walk_forward(pair, plan=plan, settings=settings, seed=seed)
                prefix = "" if len(plan.seeds) == 1 else f"seed{seed}/"
                for report in done.reports:
                    _log_fold(report, prefix=prefix)
                reports.extend(done.reports)
                rows.update({(pair, fold, seed): each for fold, each in done.rows.items()})
                _write(
                    path,
                    reports,
                    rows,
                    plan=plan,
                    settings=settings,
                    elapsed=time.perf_counter() - started,
                    complete=False,
                )
        elapsed = time.perf_counter() - started
        summaries = summarise(reports, rows)
        for summary in summaries:
            _log_summary(summary)
        mlflow.log_metric("elapsed_seconds", elapsed)
        _write(path, reports, rows, plan=plan, settings=settings, elapsed=elapsed, complete=True)
        mlflow.log_artifact(str(path))
        mlflow.log_artifact(str(path.with_suffix(".json")))
    return reports, path


def _write(
    path: Path,
    reports: list[FoldReport],
    rows: dict[tuple[str, str, int], FoldRows],
    *,
    plan: EvaluationPlan,
    settings: Settings,
    elapsed: float,
    complete: bool,
) -> None:
    document = report_document(
        reports, rows, plan=plan, settings=settings, elapsed=elapsed, complete=complete
    )
    path.write_text(render_markdown(document))
    path.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")


def report_document(
    reports: list[FoldReport],
    rows: dict[tuple[str, str, int], FoldRows],
    *,
    plan: EvaluationPlan,
    settings: Settings,
    elapsed: float,
    complete: bool,
) -> dict[str, Any]:
    """The JSON report: the plan, the model's shape, every seed's folds, and per pair and fold
    the seed ensemble and the seeds' spread (`summarise` of `reports` and their `rows`)."""
    return _jsonable(
        {
            "plan": asdict(plan),
            "model": {
                "layers": settings.lstm_layers,
                "units": settings.lstm_units,
                "dropout": settings.dropout,
                "sequence_length": settings.sequence_length,
                "horizon": settings.horizon,
                "batch_size": settings.batch_size,
                "validation_fraction": settings.validation_fraction,
                "metric": settings.promotion_metric,
            },
            "elapsed_seconds": elapsed,
            "complete": complete,
            "folds": [asdict(r) for r in reports],
            "summary": [asdict(s) for s in summarise(reports, rows)],
        }
    )


def fold_reports(document: dict[str, Any]) -> list[FoldReport]:
    """The per-seed fold reports of a JSON report (`report_document`), as written."""

    def restore(data: dict[str, Any]) -> FoldReport:
        values = dict(data)
        values["metrics"] = {
            name: {k: math.nan if v is None else float(v) for k, v in metrics.items()}
            for name, metrics in data["metrics"].items()
        }
        values["intervals"] = {
            name: {
                k: (
                    math.nan if v[0] is None else float(v[0]),
                    math.nan if v[1] is None else float(v[1]),
                )
                for k, v in intervals.items()
            }
            for name, intervals in data["intervals"].items()
        }
        return FoldReport(**values)

    return [restore(data) for data in document["folds"]]


def summaries_of(document: dict[str, Any]) -> list[SeedSummary]:
    """The seed summaries of a JSON report (`report_document`), as written.

    Raises:
        ValueError: a report written before the seeds were ensembled.
    """
    summaries = document.get("summary") or []
    if any("seed_sd" not in data for data in summaries):
        raise ValueError(
            "the report was written before seeds were ensembled (its summary averages the "
            "seeds' intervals): run `tbml evaluate` again"
        )
    return [
        SeedSummary(
            **{
                **data,
                "seeds": tuple(data["seeds"]),
                "metrics": _floats(data["metrics"]),
                "intervals": {
                    name: {k: (_float(v[0]), _float(v[1])) for k, v in each.items()}
                    for name, each in data["intervals"].items()
                },
                "verdicts": {
                    name: {k: _float(v) if v is None else v for k, v in each.items()}
                    for name, each in data["verdicts"].items()
                },
                "seed_mean": _floats(data["seed_mean"]),
                "seed_sd": _floats(data["seed_sd"]),
            }
        )
        for data in summaries
    ]


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _floats(table: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float]]:
    return {name: {k: _float(v) for k, v in each.items()} for name, each in table.items()}


def _resumed() -> bool:
    # Under `mlflow run` the entry point's parameters are logged already.
    run = mlflow.active_run()
    return run is not None and bool(run.data.params)


def _log_fold(report: FoldReport, *, prefix: str = "") -> None:
    step = 0 if report.fold == "all" else int(report.fold)
    suffix = "_pooled" if report.fold == "all" else ""
    key = f"{prefix}{report.pair}"
    values = {
        f"{key}/{name}/{metric}{suffix}": value
        for name, metrics in report.metrics.items()
        for metric, value in metrics.items()
    }
    against = report.verdicts[report.strongest_baseline]
    values.update(
        {
            f"{key}/beats_mean_difference{suffix}": float(against["mean"]),
            f"{key}/beats_interval_low{suffix}": float(against["low"]),
            f"{key}/beats_interval_high{suffix}": float(against["high"]),
            f"{key}/beats_rows{suffix}": float(against["rows"]),
            f"{key}/beats{suffix}": float(report.beats_baseline),
        }
    )
    mlflow.log_metrics(values, step=step)


def _log_summary(summary: SeedSummary) -> None:
    step = 0 if summary.fold == "all" else int(summary.fold)
    suffix = "_pooled" if summary.fold == "all" else ""
    against = summary.verdicts[summary.strongest_baseline]
    values: dict[str, float] = {
        f"{summary.pair}/beats_seeds{suffix}": float(summary.beats_seeds),
        f"{summary.pair}/ensemble/beats{suffix}": float(summary.beats_baseline),
        f"{summary.pair}/ensemble/beats_mean_difference{suffix}": float(against["mean"]),
        f"{summary.pair}/ensemble/beats_interval_low{suffix}": float(against["low"]),
        f"{summary.pair}/ensemble/beats_interval_high{suffix}": float(against["high"]),
    }
    for name, metrics in summary.metrics.items():
        for metric, value in metrics.items():
            if not math.isnan(value):
                values[f"{summary.pair}/ensemble/{name}/{metric}{suffix}"] = value
            mean, sd = summary.seed_mean[name][metric], summary.seed_sd[name][metric]
            if not math.isnan(mean):
                values[f"{summary.pair}/{name}/{metric}_mean{suffix}"] = mean
            if not math.isnan(sd):
                values[f"{summary.pair}/{name}/{metric}_sd{suffix}"] = sd
    mlflow.log_metrics(values, step=step)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _cell(
    value: float, interval: tuple[float, float] | None = None, *, pct: bool = False, digits: int = 3
) -> str:
    if math.isnan(value):
        return "—"
    scale, places = (100.0, 1) if pct else (1.0, digits)
    text = f"{value * scale:.{places}f}"
    if interval is not None and not math.isnan(interval[0]):
        text += f" [{interval[0] * scale:.{places}f}, {interval[1] * scale:.{places}f}]"
    return text


def figure(
    summary: SeedSummary,
    name: str,
    metric: str,
    *,
    pct: bool = False,
    digits: int = 3,
    interval: bool = True,
) -> str:
    """The seed ensemble's value of `metric` for predictor `name`, with its 95 % interval where
    the metric has one (and `interval`). Accuracy (`pct`) in %, one decimal."""
    bounds = summary.intervals[name].get(metric) if interval else None
    return _cell(summary.metrics[name][metric], bounds, pct=pct, digits=digits)


def seed_sd(
    summary: SeedSummary, name: str, metric: str, *, pct: bool = False, digits: int = 3
) -> str:
    """The standard deviation of `metric` over the seeds taken one by one ("—" for one seed)."""
    return _cell(summary.seed_sd[name][metric], pct=pct, digits=digits)


def difference(verdict: dict[str, Any]) -> str:
    """A paired verdict's mean and 95 % interval, four decimals: `+0.0012 [-0.0030, +0.0054]`."""
    return f"{verdict['mean']:+.4f} [{verdict['low']:+.4f}, {verdict['high']:+.4f}]"


def _seeds_text(seeds: tuple[int, ...] | list[int]) -> str:
    return ", ".join(map(str, seeds))


def summary_table(summaries: list[SeedSummary], *, metric: str) -> str:
    """One row per pair and fold: the seed ensemble against its strongest baseline."""
    lines = [
        "| pair | fold | test window (UTC) | rows | seeds | model accuracy % | model ROC AUC | "
        f"model {metric} | {metric} sd over seeds | strongest baseline ({metric}) | "
        "model - strongest | beats every baseline | seeds alone beating every baseline |",
        "|---|---|---|---:|---:|---|---|---|---|---|---|---|---:|",
    ]
    for s in summaries:
        strongest = s.strongest_baseline
        lines.append(
            f"| {s.pair} | {s.fold} | {s.test_start[:10]} .. {s.test_end[:10]} | {s.rows} | "
            f"{s.n} | {figure(s, MODEL, 'accuracy', pct=True)} | "
            f"{figure(s, MODEL, 'roc_auc')} | {figure(s, MODEL, metric)} | "
            f"{seed_sd(s, MODEL, metric, digits=4)} | "
            f"{strongest} ({figure(s, strongest, metric, interval=False)}) | "
            f"{difference(s.verdicts[strongest])} | {'yes' if s.beats_baseline else 'no'} | "
            f"{s.beats_seeds}/{s.n} |"
        )
    return "\n".join(lines)


def verdict_state(verdict: dict[str, Any], margin: float) -> str:
    """better (interval wholly below -margin), worse (wholly above +margin) or undecided."""
    if float(verdict["high"]) < -margin:
        return "better"
    if float(verdict["low"]) > margin:
        return "worse"
    return "undecided"


def verdict_table(summaries: list[SeedSummary]) -> str:
    """One row per pair, fold and baseline: the seed ensemble's paired verdict."""
    lines = [
        "| pair | fold | baseline | baseline log loss | model log loss | model - baseline "
        "(95 % interval) | lag | model | seeds alone better | seeds alone worse |",
        "|---|---|---|---|---|---|---:|---|---:|---:|",
    ]
    for s in summaries:
        for name, verdict in s.verdicts.items():
            counts = s.seed_verdicts[name]
            lines.append(
                f"| {s.pair} | {s.fold} | {name} | {figure(s, name, 'log_loss', interval=False)} | "
                f"{figure(s, MODEL, 'log_loss', interval=False)} | {difference(verdict)} | "
                f"{verdict['lag']} | {verdict_state(verdict, s.margin)} | "
                f"{counts['better']}/{s.n} | {counts['worse']}/{s.n} |"
            )
    return "\n".join(lines)


def render_markdown(document: dict[str, Any]) -> str:
    """The report of a JSON document (`report_document`): how it was made, a summary row per
    pair and fold, the paired verdicts against every baseline, every predictor, every seed."""
    plan, model = document["plan"], document["model"]
    reports = fold_reports(document)
    summaries = summaries_of(document)
    metric = model["metric"]
    rule = reports[0].rule if reports else {}
    seeds = plan["seeds"]
    lines = [
        f"# Walk-forward evaluation: {plan['model_type']}",
        "",
        *(
            []
            if document["complete"]
            else ["**Incomplete**: the evaluation was interrupted or is still running.", ""]
        ),
        f"- Pairs: {', '.join(plan['pairs'])}; {plan['folds']} expanding folds of "
        f"{plan['test_size']} hourly test samples each, the last ending at the newest candle"
        + (f" (newest {plan['max_rows']} candles only)" if plan["max_rows"] else "")
        + ".",
        f"- Model: {plan['model_type']}, {model['layers']} layers x {model['units']} units, "
        f"dropout {model['dropout']}, sequence length {model['sequence_length']}, horizon "
        f"{model['horizon']}, batch {model['batch_size']}; at most {plan['epochs']} epochs, early "
        f"stopping on validation loss (patience {plan['patience']}), best weights restored; "
        f"seeds {_seeds_text(seeds)}.",
        "- Each fold: purge gap of sequence_length + horizon between train, validation "
        f"({model['validation_fraction']:.0%} of the pre-test samples) and test; scaler fitted "
        "on the training rows only; baselines fitted on the same training rows.",
        f"- {ENSEMBLE_WORDS} Fold `all` pools the folds' rows.",
        f"- {INTERVAL_WORDS} The margin is {rule.get('margin', 0.0):g} (ML_PROMOTION_MARGIN).",
        f"- {calibration_line(reports)}",
        f"- Took {document['elapsed_seconds'] / 60:.1f} min.",
        "",
        "## Summary",
        "",
        summary_table(summaries, metric=metric),
        "",
        "## Paired verdicts against every baseline",
        "",
        verdict_table(summaries),
        "",
        "## Every predictor",
        "",
        "The seed ensemble's figures; `sd`: the standard deviation of each seed's own log loss.",
        "",
        "| pair | fold | predictor | accuracy % | balanced accuracy % | ROC AUC | log loss "
        "| log loss sd over seeds | Brier |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        for name in s.metrics:
            label = f"**{name}**" if name == MODEL else name
            lines.append(
                f"| {s.pair} | {s.fold} | {label} | "
                f"{figure(s, name, 'accuracy', pct=True)} | "
                f"{figure(s, name, 'balanced_accuracy', pct=True)} | "
                f"{figure(s, name, 'roc_auc')} | {figure(s, name, 'log_loss')} | "
                f"{seed_sd(s, name, 'log_loss', digits=4)} | {figure(s, name, 'brier')} |"
            )
    lines += [
        "",
        "## Every seed",
        "",
        "Each seed alone: the model's log loss and, against each baseline, its log loss per row "
        "minus the baseline's, mean [95 % interval]. `epochs`: the kept epoch / epochs run.",
        "",
        seed_table(reports),
        "",
    ]
    return "\n".join(lines)


ENSEMBLE_WORDS = (
    "Seeds ensembled: each predictor's probability of up is averaged over the seeds, row by row, "
    "and the ensemble is scored and judged once (the deterministic baselines are the same under "
    "every seed; LightGBM's column sampling takes the seed, so it is ensembled too). `sd over "
    "seeds`: the standard deviation of each seed's own figure (the seed spread); `seeds alone`: "
    "how many seeds, each judged alone, reach the verdict."
)
INTERVAL_WORDS = (
    "Intervals (95 %): Wilson for accuracy; for log loss and for `model - baseline` (the "
    "model's log loss per row minus the baseline's on the same rows), a Newey-West t-interval of "
    "the mean (`pipelines.lifecycle.intervals.paired_interval`, `lag` its bandwidth), whose "
    "coverage `python -m bench.verdict_coverage` measures; ROC AUC has no per-row form and is a "
    "point estimate. `beats every baseline`: every interval lies wholly below -margin."
)


def seed_table(reports: list[FoldReport]) -> str:
    """One row per pair, fold and seed: the model's log loss and its verdict on every baseline."""
    baselines = list(reports[0].verdicts) if reports else []
    lines = [
        "| pair | fold | seed | model log loss | epochs | "
        + " | ".join(f"- {name}" for name in baselines)
        + " | beats |",
        "|---|---|---:|---|---|" + "---|" * len(baselines) + "---|",
    ]
    pair_order = {pair: i for i, pair in enumerate(dict.fromkeys(r.pair for r in reports))}

    def order(r: FoldReport) -> tuple[int, int, int]:
        return (pair_order[r.pair], 10**6 if r.fold == "all" else int(r.fold), r.seed)

    for r in sorted(reports, key=order):
        epochs = f"{r.best_epoch + 1}/{r.epochs_run}" if r.epochs_run else ""
        lines.append(
            f"| {r.pair} | {r.fold} | {r.seed} | {_cell(r.metrics[MODEL]['log_loss'])} | "
            f"{epochs} | "
            + " | ".join(difference(r.verdicts[name]) for name in baselines)
            + f" | {'yes' if r.beats_baseline else 'no'} |"
        )
    return "\n".join(lines)
