"""Walk-forward evaluation: k expanding folds per pair, the model against every baseline.

Fold i trains on everything before its test window (less the purge gaps and the validation part)
and tests on the next `test_size` samples; the last fold's window ends at the newest candle.
Each fold goes through the same `fit_and_score` as a training run (the training's epochs and
early stopping by default: what is evaluated is what is deployed), once per seed of the plan
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

The JSON report keeps every fold's rows (candle time, outcome, each predictor's probability) per
pair, fold and seed, and is rewritten after every fold: a run stopped by its time budget or killed
resumes where it was, fitting only the (pair, fold, seed) the report lacks.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mlproject.config import TrainConfig
from mlproject.data import Dataset, Split, decided_rows, walk_forward_splits
from mlproject.evaluation_records import (
    FoldReport,
    FoldRows,
    Key,
    SeedSummary,
    fold_report,
    fold_reports,
    kept,
    pooled_report,
    record_rows,
    rows_record,
    summarise,
)
from mlproject.evaluation_text import render_markdown
from mlproject.scoring import MODEL, required_baselines
from mlproject.tracking import active_run
from pipelines.features.params import DEFAULT_SET, FEATURE_SETS
from pipelines.lifecycle.scores import log_loss
from pipelines.pairs import check_pair
from pipelines.settings import Settings

logger = logging.getLogger(__name__)

# At least this many folds by default: 6 x 2,000 test hours per pair, four pairs pooled, is what
# it takes for the paired interval to see an edge of about 0.001 nats per hour.
DEFAULT_FOLDS = 6
DEFAULT_BUDGET_MINUTES = 90.0
# What a (pair, fold, seed) in a report depends on besides the pair and the seed: a report is
# resumed only by a plan that agrees on all of these.
RESUME_FIELDS: tuple[str, ...] = (
    "model_type",
    "feature_set",
    "folds",
    "test_size",
    "epochs",
    "patience",
    "max_rows",
)


class ResumeError(ValueError):
    """A report in the output folder that this evaluation cannot resume."""


@dataclass(frozen=True)
class EvaluationPlan:
    """What to evaluate and how long it may take (`budget_minutes`, 0 for no limit)."""

    pairs: tuple[str, ...]
    model_type: str = "lstm"
    # The features every fold computes (pipelines.features.spec.FEATURE_SETS).
    feature_set: str = DEFAULT_SET
    folds: int = DEFAULT_FOLDS
    test_size: int = 2000
    epochs: int = 100
    patience: int = 5
    seeds: tuple[int, ...] = (42,)
    max_rows: int = 0
    budget_minutes: float = DEFAULT_BUDGET_MINUTES

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("an evaluation needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, got {','.join(map(str, self.seeds))}")
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(
                f"unknown feature set {self.feature_set!r}: expected one of "
                f"{', '.join(FEATURE_SETS)}"
            )
        if not self.budget_minutes >= 0:
            raise ValueError(
                f"budget_minutes must be >= 0 (0: no limit), got {self.budget_minutes!r}"
            )

    @property
    def label(self) -> str:
        """The model type, and its feature set unless the default: `lightgbm`,
        `lightgbm-cross`; the report's name and its line on the evaluation page."""
        return report_label(self.model_type, self.feature_set)

    @property
    def seed(self) -> int:
        """The first seed (the only one of a one-seed plan)."""
        return self.seeds[0]

    def schedule(self) -> Iterator[Key]:
        """Every (pair, fold, seed) in the order they are fitted: seeds outermost, then folds
        newest first, then pairs, so a run its budget stops leaves every pair the same newest
        folds under the first seeds."""
        for seed in self.seeds:
            for number in range(self.folds, 0, -1):
                for pair in self.pairs:
                    yield pair, str(number), seed

    @classmethod
    def from_settings(
        cls, settings: Settings, *, pairs: list[str], **overrides: Any
    ) -> EvaluationPlan:
        """A plan with the defaults: at least `DEFAULT_FOLDS` folds (ML_WALK_FORWARD_FOLDS when
        larger) of ML_WALK_FORWARD_TEST_SIZE samples, the training's epochs and early-stopping
        patience (ML_EPOCHS, ML_EARLY_STOPPING_PATIENCE); `seed=` is a one-seed `seeds=`."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "seed" in given:
            if "seeds" in given:
                raise ValueError("give seed or seeds, not both")
            given["seeds"] = (given.pop("seed"),)
        if "seeds" in given:
            given["seeds"] = tuple(int(s) for s in given["seeds"])
        return cls(
            pairs=tuple(check_pair(p, settings.pairs) for p in pairs),
            folds=given.pop("folds", max(settings.walk_forward_folds, DEFAULT_FOLDS)),
            test_size=given.pop("test_size", settings.walk_forward_test_size),
            epochs=given.pop("epochs", settings.epochs),
            patience=given.pop("patience", settings.early_stopping_patience),
            **given,
        )


def report_label(model_type: str, feature_set: str | None) -> str:
    """`lightgbm` for the default features, `lightgbm-cross` for another set."""
    if not feature_set or feature_set == DEFAULT_SET:
        return model_type
    return f"{model_type}-{feature_set}"


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
class PairData:
    """A pair's dataset and its walk-forward splits (the same under every seed)."""

    dataset: Dataset
    splits: list[Split]

    def window(self, number: int) -> tuple[str, str]:
        """Fold `number`'s (1-based) first and last test candle, ISO 8601."""
        split, index = self.splits[number - 1], self.dataset.candles.index
        return index[split.test.start].isoformat(), index[split.test.stop - 1].isoformat()


def pair_data(pair: str, *, plan: EvaluationPlan, settings: Settings) -> PairData:
    """Load `pair`'s candles and features and cut the plan's folds."""
    from mlproject.train import load_dataset

    config = TrainConfig.from_settings(
        settings, pair=pair, model_type=plan.model_type, feature_set=plan.feature_set
    )
    dataset = load_dataset(config, settings=settings, max_rows=plan.max_rows)
    splits = walk_forward_splits(
        dataset,
        folds=plan.folds,
        test_size=plan.test_size,
        val_fraction=settings.validation_fraction,
    )
    return PairData(dataset=dataset, splits=splits)


def run_fold(
    key: Key, data: PairData, *, plan: EvaluationPlan, settings: Settings
) -> tuple[FoldReport, FoldRows]:
    """Fit and score one (pair, fold, seed): its report and its rows as the report keeps them."""
    # TensorFlow comes in with the fold, here and not on import: `--combine` never needs it.
    from mlproject.fold import fit_and_score

    pair, fold, seed = key
    config = TrainConfig.from_settings(
        settings,
        pair=pair,
        model_type=plan.model_type,
        feature_set=plan.feature_set,
        epochs=plan.epochs,
        seed=seed,
    )
    fold_settings = settings.model_copy(update={"early_stopping_patience": plan.patience})
    split = data.splits[int(fold) - 1]
    result = fit_and_score(data.dataset, split, config=config, settings=fold_settings)
    y = result.scores.y
    tested = decided_rows(data.dataset, split.test)
    if tested.size != y.size:
        raise ValueError(
            f"{pair} fold {fold}: {y.size} scored rows, but the test window has {tested.size} "
            "up-or-down rows: the rows' candle times cannot be told"
        )
    start, end = data.window(int(fold))
    report = replace(
        fold_report(pair, fold, result.scores, start=start, end=end, seed=seed),
        epochs_run=result.fit.epochs_run,
        best_epoch=result.fit.best_epoch,
        fit_seconds=result.fit.fit_seconds,
        extra=_calibration(result, y=y),
    )
    stamps = pd.DatetimeIndex(data.dataset.candles.index[tested])
    times = np.asarray(stamps.as_unit("s").asi8, dtype=np.int64)
    rows = FoldRows(
        y=y, probas={name: p.proba for name, p in result.scores.predictions.items()}, times=times
    )
    logger.info(
        "%s fold %s seed %d: model accuracy %.4f, log loss %.4f (%s: %.4f), %.0f s",
        pair,
        fold,
        seed,
        report.metrics[MODEL]["accuracy"],
        report.metrics[MODEL]["log_loss"],
        report.strongest_baseline,
        report.metrics[report.strongest_baseline]["log_loss"],
        report.fit_seconds,
    )
    return report, kept(key, rows)


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


@dataclass
class Progress:
    """What an evaluation has finished: per (pair, fold, seed) its report and rows, and the time
    spent on it in earlier runs."""

    reports: dict[Key, FoldReport] = field(default_factory=dict)
    rows: dict[Key, FoldRows] = field(default_factory=dict)
    elapsed: float = 0.0
    pairs: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()

    def add(self, key: Key, report: FoldReport, rows: FoldRows) -> None:
        self.reports[key], self.rows[key] = report, rows

    def ordered(self, plan: EvaluationPlan, *, settings: Settings) -> list[FoldReport]:
        """Every finished fold report, seeds outermost, then pairs, folds oldest first, each
        pair and seed closed by its fold `all` (the folds it has, pooled)."""
        out: list[FoldReport] = []
        for seed in plan.seeds:
            for pair in plan.pairs:
                keys = [
                    (pair, str(n), seed)
                    for n in range(1, plan.folds + 1)
                    if (pair, str(n), seed) in self.reports
                ]
                if not keys:
                    continue
                folds = [self.reports[key] for key in keys]
                out += folds
                parts = [self.rows[key] for key in keys]
                out.append(
                    pooled_report(
                        pair,
                        seed,
                        folds,
                        parts,
                        settings=settings,
                        required=required_baselines(plan.model_type),
                    )
                )
        return out

    def got(self, plan: EvaluationPlan) -> dict[str, dict[str, list[int]]]:
        """Per pair, per fold it has, the seeds that reached it."""
        return {
            pair: {
                str(n): [s for s in plan.seeds if (pair, str(n), s) in self.reports]
                for n in range(1, plan.folds + 1)
                if any((pair, str(n), s) in self.reports for s in plan.seeds)
            }
            for pair in plan.pairs
        }


def load_progress(path: Path, *, plan: EvaluationPlan, settings: Settings) -> Progress:
    """What the JSON report at `path` has finished, when `plan` may resume it (nothing when there
    is no report).

    Raises:
        ResumeError: a report of another plan or model shape, or one without its rows.
    """
    if not path.exists():
        return Progress()
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"cannot resume from {path}: {exc}; pass --fresh to start over") from None
    fresh = "pass --fresh to start over, or write elsewhere with --output-dir"
    if "rows" not in document:
        raise ResumeError(
            f"{path} was written before reports kept their rows and cannot be resumed: {fresh}"
        )
    before = document["plan"]
    before = {"feature_set": DEFAULT_SET, **before}  # reports from before feature sets
    differ = [
        f"{name} {before.get(name)!r} (now {getattr(plan, name)!r})"
        for name in RESUME_FIELDS
        if before.get(name) != getattr(plan, name)
    ]
    shape = _model_shape(settings)
    differ += [
        f"model {name} {document['model'].get(name)!r} (now {value!r})"
        for name, value in shape.items()
        if document["model"].get(name) != value
    ]
    if differ:
        raise ResumeError(f"{path} is a report of another evaluation: {'; '.join(differ)}; {fresh}")
    reports = {(r.pair, r.fold, r.seed): r for r in fold_reports(document) if r.fold != "all"}
    rows = dict(record_rows(record) for record in document["rows"])
    progress = Progress(
        elapsed=float(document.get("elapsed_seconds") or 0.0),
        pairs=tuple(before["pairs"]),
        seeds=tuple(int(s) for s in before["seeds"]),
    )
    for key, report in reports.items():
        if key not in rows:
            raise ResumeError(f"{path}: {key[0]} fold {key[1]} seed {key[2]} has no rows; {fresh}")
        progress.add(key, report, rows[key])
    return progress


def _check_windows(pair: str, data: PairData, progress: Progress) -> None:
    """The report's folds of `pair` tested the windows the candles give now."""
    for (each, fold, seed), report in progress.reports.items():
        if each != pair or int(fold) > len(data.splits):
            continue
        now = data.window(int(fold))
        if (report.test_start, report.test_end) != now:
            raise ResumeError(
                f"{pair} fold {fold} seed {seed} of the report tested {report.test_start} .. "
                f"{report.test_end}, the candles now give {now[0]} .. {now[1]} (newer candles?): "
                "pass --fresh to start over, or write elsewhere with --output-dir"
            )


def _union(first: tuple[Any, ...], second: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys((*first, *second)))


def evaluate(
    plan: EvaluationPlan,
    *,
    settings: Settings,
    output_dir: Path,
    fresh: bool = False,
    on_fold: Callable[[FoldReport], None] | None = None,
) -> tuple[list[FoldReport], Path]:
    """Walk forward over every pair, fold and seed of `plan` (in `EvaluationPlan.schedule`
    order); write and log the report; return the per-seed fold reports and the report's path.

    The report (markdown and JSON) is rewritten after each fold, marked incomplete until the
    last. An existing report of the same evaluation in `output_dir` is resumed (unless `fresh`):
    its folds are kept, not fitted again, and its pairs and seeds join the plan's. Once
    `plan.budget_minutes` have passed no further fold starts; the report says which folds each
    pair got.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"walk_forward_{plan.label}.md"
    progress = (
        Progress()
        if fresh
        else load_progress(path.with_suffix(".json"), plan=plan, settings=settings)
    )
    plan = replace(
        plan, pairs=_union(progress.pairs, plan.pairs), seeds=_union(progress.seeds, plan.seeds)
    )
    with active_run(
        settings,
        experiment=settings.evaluation_experiment_name,
        run_name=f"walk-forward-{plan.label}",
    ):
        if not _resumed():
            mlflow.log_params(
                {
                    "pairs": ",".join(plan.pairs),
                    "model_type": plan.model_type,
                    "feature_set": plan.feature_set,
                    "folds": plan.folds,
                    "test_size": plan.test_size,
                    "epochs": plan.epochs,
                    "patience": plan.patience,
                    "seed": plan.seed,
                    "max_rows": plan.max_rows,
                    "budget_minutes": plan.budget_minutes,
                }
            )
        mlflow.log_param("seeds", ",".join(map(str, plan.seeds)))
        started = time.perf_counter()
        budget = plan.budget_minutes * 60.0
        data: dict[str, PairData] = {}
        stopped = False
        for key in plan.schedule():
            if key in progress.reports:
                continue
            if budget and time.perf_counter() - started >= budget:
                stopped = True
                logger.info("budget of %g min spent: stopping before %s", plan.budget_minutes, key)
                break
            pair = key[0]
            if pair not in data:
                data[pair] = pair_data(pair, plan=plan, settings=settings)
                _check_windows(pair, data[pair], progress)
            report, rows = run_fold(key, data[pair], plan=plan, settings=settings)
            progress.add(key, report, rows)
            _log_fold(report, prefix="" if len(plan.seeds) == 1 else f"seed{key[2]}/")
            if on_fold is not None:
                on_fold(report)
            _write(
                path,
                progress,
                plan=plan,
                settings=settings,
                elapsed=progress.elapsed + time.perf_counter() - started,
                stopped=False,
            )
        elapsed = progress.elapsed + time.perf_counter() - started
        reports = progress.ordered(plan, settings=settings)
        for report in reports:
            if report.fold == "all":
                _log_fold(report, prefix="" if len(plan.seeds) == 1 else f"seed{report.seed}/")
        summaries = summarise(reports, progress.rows, required=required_baselines(plan.model_type))
        for summary in summaries:
            _log_summary(summary)
        mlflow.log_metric("elapsed_seconds", elapsed)
        _write(path, progress, plan=plan, settings=settings, elapsed=elapsed, stopped=stopped)
        mlflow.log_artifact(str(path))
        mlflow.log_artifact(str(path.with_suffix(".json")))
    return reports, path


def _write(
    path: Path,
    progress: Progress,
    *,
    plan: EvaluationPlan,
    settings: Settings,
    elapsed: float,
    stopped: bool,
) -> None:
    document = progress_document(
        progress, plan=plan, settings=settings, elapsed=elapsed, stopped=stopped
    )
    path.write_text(render_markdown(document))
    # Written aside and moved into place: a run killed while writing keeps its last whole report.
    target = path.with_suffix(".json")
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(target)


def progress_document(
    progress: Progress, *, plan: EvaluationPlan, settings: Settings, elapsed: float, stopped: bool
) -> dict[str, Any]:
    """The JSON report of what `progress` holds (`report_document`), with whether the budget
    stopped the run and the folds each pair got."""
    document = report_document(
        progress.ordered(plan, settings=settings),
        progress.rows,
        plan=plan,
        settings=settings,
        elapsed=elapsed,
        complete=all(key in progress.reports for key in plan.schedule()),
    )
    document["stopped"] = "budget" if stopped else None
    document["folds_got"] = progress.got(plan)
    return document


def _model_shape(settings: Settings) -> dict[str, Any]:
    return {
        "layers": settings.lstm_layers,
        "units": settings.lstm_units,
        "dropout": settings.dropout,
        "sequence_length": settings.sequence_length,
        "horizon": settings.horizon,
        "batch_size": settings.batch_size,
        "validation_fraction": settings.validation_fraction,
        "metric": settings.promotion_metric,
    }


def report_document(
    reports: list[FoldReport],
    rows: dict[Key, FoldRows],
    *,
    plan: EvaluationPlan,
    settings: Settings,
    elapsed: float,
    complete: bool,
) -> dict[str, Any]:
    """The JSON report: the plan, the model's shape, every seed's folds and their rows, and per
    pair and fold the seed ensemble and the seeds' spread (`summarise` of `reports` and their
    `rows`)."""
    folds = [(r.pair, r.fold, r.seed) for r in reports if r.fold != "all"]
    return _jsonable(
        {
            "plan": asdict(plan),
            "model": _model_shape(settings),
            "elapsed_seconds": elapsed,
            "complete": complete,
            "stopped": None,
            "folds_got": {},
            "folds": [asdict(r) for r in reports],
            "summary": [
                asdict(s)
                for s in summarise(reports, rows, required=required_baselines(plan.model_type))
            ],
            "rows": [rows_record(key, rows[key]) for key in folds if key in rows],
        }
    )


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
