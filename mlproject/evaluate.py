"""Walk-forward evaluation: k expanding folds per pair, the model against every baseline.

Fold i trains on everything before its test window (less the purge gaps and the validation part)
and tests on the next `test_size` samples; the last fold's window ends at the newest candle.
Each fold goes through the same `fit_and_score` as a training run. Intervals: Wilson for
accuracy; a circular moving-block bootstrap (blocks of 24 rows, 1000 resamples) for ROC AUC and
log loss, so that the dependence between neighbouring hours is not pretended away. `beats` is
the training run's paired verdict (`mlproject.scoring.judge`): per-row log-loss differences,
model minus each baseline on the same rows, through a moving-block bootstrap of a day's blocks.
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
from mlproject.fold import fit_and_score
from mlproject.metrics import (
    block_bootstrap_interval,
    log_loss,
    roc_auc,
    wilson_interval,
)
from mlproject.scoring import MODEL, Scores, score
from mlproject.tracking import active_run
from mlproject.train import load_dataset
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
    seed: int = 42
    max_rows: int = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, pairs: list[str], **overrides: Any
    ) -> EvaluationPlan:
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(
            pairs=tuple(check_pair(p, settings.pairs) for p in pairs),
            folds=given.pop("folds", settings.walk_forward_folds),
            test_size=given.pop("test_size", settings.walk_forward_test_size),
            epochs=given.pop("epochs", settings.walk_forward_epochs),
            patience=given.pop("patience", settings.walk_forward_patience),
            **given,
        )


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
    # Model minus each baseline, log loss per row: mean, low, high, rows, block.
    verdicts: dict[str, dict[str, float | int]] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)  # `VerdictRule.to_dict()`
    epochs_run: int = 0
    best_epoch: int = 0
    fit_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _intervals(
    y: np.ndarray, proba: np.ndarray, pred: np.ndarray, seed: int
) -> dict[str, tuple[float, float]]:
    return {
        "accuracy": wilson_interval(int(np.sum(pred == y)), int(y.size)),
        "roc_auc": block_bootstrap_interval(roc_auc, y_true=y, proba=proba, seed=seed),
        "log_loss": block_bootstrap_interval(log_loss, y_true=y, proba=proba, seed=seed),
    }


def _report(pair: str, fold: str, scores: Scores, *, start: str, end: str, seed: int) -> FoldReport:
    y = scores.y
    return FoldReport(
        pair=pair,
        fold=fold,
        test_start=start,
        test_end=end,
        rows=int(y.size),
        metrics=scores.metrics,
        intervals={
            name: _intervals(y, p.proba, p.pred, seed) for name, p in scores.predictions.items()
        },
        strongest_baseline=scores.strongest_baseline,
        beats_baseline=scores.beats_baseline,
        verdicts={name: v.to_dict() for name, v in scores.judgement.verdicts.items()},
        rule=scores.rule.to_dict(),
    )


def walk_forward(
    pair: str,
    *,
    plan: EvaluationPlan,
    settings: Settings,
    on_fold: Callable[[FoldReport], None] | None = None,
) -> list[FoldReport]:
    """Every fold of `pair`, then the folds pooled (fold "all")."""
    config = TrainConfig.from_settings(
        settings, pair=pair, model_type=plan.model_type, epochs=plan.epochs, seed=plan.seed
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
    pooled: dict[str, list[np.ndarray]] = {}
    for number, split in enumerate(splits, start=1):
        result = fit_and_score(dataset, split, config=config, settings=fold_settings)
        report = _report(
            pair,
            str(number),
            result.scores,
            start=index[split.test.start].isoformat(),
            end=index[split.test.stop - 1].isoformat(),
            seed=plan.seed,
        )
        report = replace(
            report,
            epochs_run=result.fit.epochs_run,
            best_epoch=result.fit.best_epoch,
            fit_seconds=result.fit.fit_seconds,
        )
        reports.append(report)
        pooled.setdefault("y", []).append(result.scores.y)
        for name, prediction in result.scores.predictions.items():
            pooled.setdefault(f"{name}.proba", []).append(prediction.proba)
            pooled.setdefault(f"{name}.pred", []).append(prediction.pred)
        logger.info(
            "%s fold %d: model accuracy %.4f, log loss %.4f (%s: %.4f)",
            pair,
            number,
            report.metrics[MODEL]["accuracy"],
            report.metrics[MODEL]["log_loss"],
            report.strongest_baseline,
            report.metrics[report.strongest_baseline]["log_loss"],
        )
        if on_fold is not None:
            on_fold(report)
    reports.append(_pooled(pair, reports, pooled, settings=settings, seed=plan.seed))
    return reports


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
    return _report(
        pair, "all", scores, start=folds[0].test_start, end=folds[-1].test_end, seed=seed
    )


def evaluate(
    plan: EvaluationPlan, *, settings: Settings, output_dir: Path
) -> tuple[list[FoldReport], Path]:
    """Walk forward over every pair of `plan`; write and log the report; return it and its path."""
    output_dir.mkdir(parents=True, exist_ok=True)
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
        started = time.perf_counter()
        reports: list[FoldReport] = []
        for pair in plan.pairs:
            pair_reports = walk_forward(pair, plan=plan, settings=settings)
            for report in pair_reports:
                _log_fold(report)
            reports.extend(pair_reports)
        elapsed = time.perf_counter() - started
        mlflow.log_metric("elapsed_seconds", elapsed)
        markdown = render_markdown(reports, plan=plan, settings=settings, elapsed=elapsed)
        path = output_dir / f"walk_forward_{plan.model_type}.md"
        path.write_text(markdown)
        data = [_jsonable(asdict(r)) for r in reports]
        json_path = path.with_suffix(".json")
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        mlflow.log_artifact(str(path))
        mlflow.log_artifact(str(json_path))
    return reports, path


def _resumed() -> bool:
    # Under `mlflow run` the entry point's parameters are logged already.
    run = mlflow.active_run()
    return run is not None and bool(run.data.params)


def _log_fold(report: FoldReport) -> None:
    step = 0 if report.fold == "all" else int(report.fold)
    suffix = "_pooled" if report.fold == "all" else ""
    values = {
        f"{report.pair}/{name}/{metric}{suffix}": value
        for name, metrics in report.metrics.items()
        for metric, value in metrics.items()
    }
    against = report.verdicts[report.strongest_baseline]
    values.update(
        {
            f"{report.pair}/beats_mean_difference{suffix}": float(against["mean"]),
            f"{report.pair}/beats_interval_low{suffix}": float(against["low"]),
            f"{report.pair}/beats_interval_high{suffix}": float(against["high"]),
            f"{report.pair}/beats_rows{suffix}": float(against["rows"]),
            f"{report.pair}/beats{suffix}": float(report.beats_baseline),
        }
    )
    mlflow.log_metrics(values, step=step)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _cell(value: float, interval: tuple[float, float] | None = None, *, pct: bool = False) -> str:
    if math.isnan(value):
        return "—"
    if pct:
        text = f"{value * 100:.1f}"
        if interval is not None and not math.isnan(interval[0]):
            text += f" [{interval[0] * 100:.1f}, {interval[1] * 100:.1f}]"
        return text
    text = f"{value:.3f}"
    if interval is not None and not math.isnan(interval[0]):
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def _difference(verdict: dict[str, float | int]) -> str:
    return f"{verdict['mean']:+.4f} [{verdict['low']:+.4f}, {verdict['high']:+.4f}]"


def render_markdown(
    reports: list[FoldReport], *, plan: EvaluationPlan, settings: Settings, elapsed: float
) -> str:
    """The report: how it was made, a summary row per pair and fold, then every predictor."""
    metric = settings.promotion_metric
    rule = reports[0].rule if reports else {}
    lines = [
        f"# Walk-forward evaluation: {plan.model_type}",
        "",
        f"- Pairs: {', '.join(plan.pairs)}; {plan.folds} expanding folds of {plan.test_size} "
        "hourly test samples each, the last ending at the newest candle"
        + (f" (newest {plan.max_rows} candles only)" if plan.max_rows else "")
        + ".",
        f"- Model: {plan.model_type}, {settings.lstm_layers} layers x {settings.lstm_units} units, "
        f"dropout {settings.dropout}, sequence length {settings.sequence_length}, horizon "
        f"{settings.horizon}, batch {settings.batch_size}; at most {plan.epochs} epochs, early "
        f"stopping on validation loss (patience {plan.patience}), best weights restored; "
        f"seed {plan.seed}.",
        "- Each fold: purge gap of sequence_length + horizon between train, validation "
        f"({settings.validation_fraction:.0%} of the pre-test samples) and test; scaler fitted on "
        "the training rows only; baselines fitted on the same training rows.",
        "- Accuracy in %, with a 95 % Wilson interval; ROC AUC and log loss with a 95 % "
        "moving-block bootstrap interval (blocks of 24 rows, 1000 resamples). Fold `all` pools "
        "the folds' predictions.",
        "- `model - strongest`: the model's log loss per row minus that of its strongest "
        "baseline (lowest log loss) on the same rows, mean and 95 % interval of a paired "
        f"moving-block bootstrap (blocks of {rule.get('block', '?')} rows, "
        f"{rule.get('resamples', '?')} resamples). `beats`: the interval against every "
        f"baseline lies wholly below zero by at least {rule.get('margin', 0.0):g} "
        "(ML_PROMOTION_MARGIN).",
        f"- Took {elapsed / 60:.1f} min.",
        "",
        "## Summary",
        "",
        "| pair | fold | test window (UTC) | rows | model accuracy % | model ROC AUC | "
        f"model {metric} | strongest baseline ({metric}) | model - strongest | "
        "logistic accuracy % | epochs | beats |",
        "|---|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        window = f"{report.test_start[:10]} .. {report.test_end[:10]}"
        model, intervals = report.metrics[MODEL], report.intervals[MODEL]
        strongest = report.strongest_baseline
        epochs = f"{report.best_epoch + 1}/{report.epochs_run}" if report.epochs_run else ""
        lines.append(
            f"| {report.pair} | {report.fold} | {window} | {report.rows} | "
            f"{_cell(model['accuracy'], intervals['accuracy'], pct=True)} | "
            f"{_cell(model['roc_auc'], intervals['roc_auc'])} | "
            f"{_cell(model[metric], intervals.get(metric))} | "
            f"{strongest} ({_cell(report.metrics[strongest][metric])}) | "
            f"{_difference(report.verdicts[strongest])} | "
            f"{_cell(report.metrics['logistic']['accuracy'], pct=True)} | {epochs} | "
            f"{'yes' if report.beats_baseline else 'no'} |"
        )
    lines += [
        "",
        "`epochs`: the kept epoch / epochs run.",
        "",
        "## Every predictor",
        "",
        "| pair | fold | predictor | accuracy % | balanced accuracy % | ROC AUC | log loss "
        "| Brier |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        for name in PREDICTORS:
            values, intervals = report.metrics[name], report.intervals[name]
            label = f"**{name}**" if name == MODEL else name
            lines.append(
                f"| {report.pair} | {report.fold} | {label} | "
                f"{_cell(values['accuracy'], intervals['accuracy'], pct=True)} | "
                f"{_cell(values['balanced_accuracy'], pct=True)} | "
                f"{_cell(values['roc_auc'], intervals['roc_auc'])} | "
                f"{_cell(values['log_loss'], intervals['log_loss'])} | "
                f"{_cell(values['brier'])} |"
            )
    lines.append("")
    return "\n".join(lines)
