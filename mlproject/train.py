"""A training run: fit, evaluate against baselines, log, export, register, promote.

`train(config, settings=...)` is what the `train` entry point, `tbml train` and the tests call.
It writes into the run named by MLFLOW_RUN_ID when `mlflow run` (or the queue) created one, and
creates its own run otherwise. What the queue reads afterwards are the run's `tbml.*` tags.

The held-out fit (train, validation for early stopping, test for the verdict) is what justifies
a version. With `ML_REFIT` (the default) the same architecture is then fitted again on every
sample but the newest `ML_GATE_MIN_ROWS`, for the epoch count early stopping chose, and that
refit is exported and registered; the samples it never learnt are its test window, where the
gate scores it. With `ML_REFIT=false` the held-out model is registered.

A calibrator (`ML_CALIBRATION`, none by default) is fitted on the held-out model's validation
rows and kept only when it helps on held validation rows (`pipelines.calibration`); it travels in
the bundle, so the scores, the verdict and the served model all read the same probabilities. A
refit has no calibrator (the identity): it never borrows the held-out model's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import mlflow
import pandas as pd
import tensorflow as tf
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas

from mlproject import plots
from mlproject import verdict as verdicts
from mlproject.architectures import average_models
from mlproject.config import TrainConfig
from mlproject.data import (
    MIN_PART_ROWS,
    Dataset,
    NotEnoughDataError,
    Split,
    decided_rows,
    fit_scaler_on,
    labels,
    sample_times,
    windows,
)
from mlproject.export import export_bundle, export_head_bundle, logistic_baseline
from mlproject.fit import FitResult, fit_epochs, make_deterministic
from mlproject.fold import (
    FoldResult,
    Model,
    configured_model,
    fit_and_score_folds,
    fit_tabular,
    predict,
    verdict_splits,
)
from mlproject.gate import GateDecision, apply_gate
from mlproject.importance import log_importance, permutation_importance
from mlproject.loading import candle_store, load_dataset, load_pool
from mlproject.magnitude_fit import fit_head, score_splits
from mlproject.scoring import MODEL, Scores
from mlproject.summary import run_summary
from mlproject.tabular import Pool, TabularModel, short_windows
from mlproject.tracking import (
    active_run,
    client_for,
    ensure_registered_model,
    git_commit,
    register_version,
)
from pipelines.calibration import (
    DEFAULT_BINS,
    Calibrator,
    expected_calibration_error,
    reliability_curve,
)
from pipelines.features.scaler import FeatureScaler
from pipelines.magnitude import round_trip_threshold
from pipelines.pairs import check_pair
from pipelines.pyfunc_model import log_candle_model
from pipelines.settings import TABULAR_TYPES, Settings
from pipelines.tracking import (
    TAG_BEATS_BASELINE,
    TAG_PROMOTION,
    TAG_PROMOTION_REASON,
    TAG_REGISTERED_MODEL,
    TAG_REGISTERED_VERSION,
    registered_model_name,
)

logger = logging.getLogger(__name__)

KERAS_ARTIFACT_PATH = "keras"  # the run's Keras model, for fine-tuning
KERAS_MODEL_FILE = "model.keras"
TAG_REFIT = "tbml.refit"  # on a version: "true" when its model is the refit (`Refit`)
RELIABILITY_ARTIFACT = "calibration/reliability.json"  # curves and ECE before/after calibration


@dataclass(frozen=True)
class Refit:
    """The held-out run's model fitted again on `rows` for `fit.epochs_run` epochs (a tabular
    model: the rounds and blend weights the held-out fit chose).

    `held` are the newest samples, which it never learnt: its test window, where the gate
    scores it. It has no calibrator of its own (`calibrator` is the identity).
    """

    model: Model
    scaler: FeatureScaler
    rows: range
    held: range
    fit: FitResult
    calibrator: Calibrator = field(default_factory=Calibrator)


@dataclass(frozen=True)
class TrainingOutcome:
    """What a training produced and what happened to it."""

    run_id: str
    scores: Scores
    registered_model: str | None
    version: str | None
    promotion: str
    reason: str
    decision: GateDecision | None
    model_uri: str | None = None  # the run's logged pyfunc model (models:/m-...)
    model_id: str | None = None


def train(config: TrainConfig, *, settings: Settings) -> TrainingOutcome:
    """Run one training end to end and return its outcome (also left as tags on the run)."""
    check_pair(config.pair, settings.pairs)
    dataset = load_dataset(config, settings=settings, max_rows=config.max_rows)
    candles = dataset.candles
    # The verdict's rows: one test window, or a tabular model's walk-forward folds (their test
    # windows together are the run's test window; the newest fold's model is the one kept).
    splits = verdict_splits(dataset, config=config, settings=settings)
    split = Split(
        train=splits[-1].train,
        val=splits[-1].val,
        test=range(splits[0].test.start, splits[-1].test.stop),
    )
    # Checked before any fit: a refit needs its held rows and enough samples before them.
    parts = _refit_rows(dataset, hold=settings.gate_min_rows) if settings.refit else None
    pool = load_pool(config, settings=settings) if config.model_type == "pooled" else None
    name = registered_model_name(config.pair, config.model_type)
    with active_run(settings, experiment=settings.experiment_name, run_name=name) as run:
        run_id = run.info.run_id
        client = client_for(settings)
        _log_params(client, run_id, config, settings=settings)
        mlflow.set_tags(_tags(config, dataset, split))
        _log_dataset(config, dataset, split, settings=settings)
        result = fit_and_score_folds(
            dataset, splits, config=config, settings=settings, on_epoch=_log_epoch, pool=pool
        )
        scores = result.scores
        mlflow.log_params({"verdict_folds": len(splits)})
        mlflow.log_metrics({**_flat_metrics(result, split), **verdicts.verdict_metrics(scores)})
        _log_calibration(result, settings=settings)
        _log_importance(result, dataset, split, config=config, settings=settings)
        mlflow.set_tags(
            {
                "beats_baseline": str(scores.beats_baseline).lower(),
                "strongest_baseline": scores.strongest_baseline,
                TAG_BEATS_BASELINE: str(scores.beats_baseline).lower(),
            }
        )
        metadata = _metadata(config, dataset, split, result, settings, run_id, name)
        # The magnitude head beside p(up): judged on the verdict's splits, shipped in the bundle.
        move = score_splits(
            dataset, splits, threshold=round_trip_threshold(settings.trading_fee), seed=config.seed
        )
        mlflow.log_metrics(move.metrics())
        metadata["magnitude"] = move.metadata()
        refit = None
        if parts is not None:
            refit = _refit(dataset, config=config, held_out=result, parts=parts, pool=pool)
        _log_refit(dataset, refit, held_out=result.fit)
        metadata["calibration"] = _calibration_metadata(result)
        if refit is not None:  # its own windows, fit_end and (no) calibrator
            metadata |= _refit_metadata(dataset, refit, held_out=metadata)
        model_uri, model_id = _log_artifacts(result, dataset, split, metadata, config, refit)
        outcome = _register_and_promote(
            client,
            config=config,
            settings=settings,
            name=name,
            run_id=run_id,
            model_uri=model_uri,
            model_id=model_id,
            scores=scores,
            candles=candles,
            refit=refit is not None,
            feature_set_version=dataset.spec.version,
        )
        outcome = dataclasses.replace(outcome, model_uri=model_uri, model_id=model_id)
        mlflow.set_tags(
            {
                k: v
                for k, v in {
                    TAG_REGISTERED_MODEL: outcome.registered_model,
                    TAG_REGISTERED_VERSION: outcome.version,
                    TAG_PROMOTION: outcome.promotion,
                    TAG_PROMOTION_REASON: outcome.reason,
                }.items()
                if v is not None
            }
        )
    logger.info("run %s: %s (%s)", run_id, outcome.promotion, outcome.reason)
    return outcome


def _log_importance(
    result: FoldResult,
    dataset: Dataset,
    split: Split,
    *,
    config: TrainConfig,
    settings: Settings,
) -> None:
    """Permutation importance of each feature on the newest validation rows, logged as a table
    and a plot (`importance/`). A network reads whole windows and is slower to ask, so it gets
    one permutation a feature where a tabular model gets three."""
    if settings.importance_rows == 0:
        return
    rows = range(max(split.val.start, split.val.stop - settings.importance_rows), split.val.stop)
    tabular = config.model_type in TABULAR_TYPES
    x = (
        short_windows(dataset, result.scaler, rows)
        if tabular
        else windows(dataset, result.scaler, rows)
    )
    y = labels(dataset, rows)
    if len(y) < MIN_PART_ROWS:
        return
    model = result.model
    table = permutation_importance(
        lambda batch: predict(model, batch),
        x,
        y,
        names=list(dataset.spec.names),
        repeats=3 if tabular else 1,
        seed=config.seed,
        max_rows=settings.importance_rows,
    )
    log_importance(table)


def _log_epoch(epoch: int, values: dict[str, float]) -> None:
    mlflow.log_metrics(values, step=epoch)


def _log_refit_epoch(epoch: int, values: dict[str, float]) -> None:
    mlflow.log_metrics({f"refit_{key}": value for key, value in values.items()}, step=epoch)


def refit_epochs(held_out: FitResult) -> int:
    """Epochs of the refit: those that made the weights the held-out run kept.

    Early stopping restores the weights of the best validation epoch (Keras does so whether or
    not it stopped), so that epoch's count is the one the held-out verdict speaks for.
    """
    return held_out.best_epoch + 1


def _refit_rows(dataset: Dataset, *, hold: int) -> tuple[range, range]:
    """The samples a refit learns, and the newest ones it holds out: (learnt, held).

    `held` ends at the newest sample and holds `hold` samples with an outcome (a tie is no
    sample), the rows the gate compares on (`ML_GATE_MIN_ROWS`). `learnt` ends `horizon` samples
    before it, so the last label learnt (`horizon` candles after the last learnt row) is the
    candle before the first held row: no learnt label reaches a held row.

    Raises:
        NotEnoughDataError: fewer than `hold` samples, or fewer than `MIN_PART_ROWS` left to
            learn before the held ones.
    """
    samples = dataset.samples
    decided = decided_rows(dataset, samples)
    learnt, held = range(samples.start, samples.start), range(samples.stop, samples.stop)
    if hold <= len(decided):
        held = range(int(decided[-hold]), samples.stop)
        learnt = range(samples.start, max(samples.start, held.start - dataset.horizon))
    learnable = len(decided_rows(dataset, learnt))
    if hold > len(decided) or learnable < MIN_PART_ROWS:
        raise NotEnoughDataError(
            f"not enough candles to refit: {len(decided)} samples (ties dropped); the refit holds "
            f"out the newest {hold} (ML_GATE_MIN_ROWS) for the gate and the {dataset.horizon} "
            f"before them (the horizon), which leaves {learnable} to learn, and it needs at "
            f"least {MIN_PART_ROWS}: use more candles (max_rows), a smaller ML_GATE_MIN_ROWS or "
            "ML_REFIT=false"
        )
    return learnt, held


def _refit(
    dataset: Dataset,
    *,
    config: TrainConfig,
    held_out: FoldResult,
    parts: tuple[range, range],
    pool: Pool | None = None,
) -> Refit:
    """`config`'s model, seeded afresh, fitted on the learnt rows of `parts` for the chosen
    epochs (`_refit_rows`: every sample but the newest, held for the gate).

    The scaler is refitted on the same rows (the bundle carries the scaler its model learnt
    with). The held rows never reach the fit: no early stopping and no calibrator use them;
    the gate alone scores the refit there.
    """
    rows, held = parts
    scaler = fit_scaler_on(dataset, rows)
    if isinstance(held_out.model, TabularModel):
        tabular_model, fit = fit_tabular(
            dataset,
            config=config,
            scaler=scaler,
            train=rows,
            val=None,
            pool=pool,
            rounds=max(1, held_out.model.rounds),
            weights=held_out.model.weights,
        )
        return Refit(model=tabular_model, scaler=scaler, rows=rows, held=held, fit=fit)
    make_deterministic(config.seed)
    x, y = windows(dataset, scaler, rows), labels(dataset, rows)
    members, fits = [], []
    for k, epochs in enumerate(held_out.member_epochs or (refit_epochs(held_out.fit),)):
        if k:
            keras.utils.set_random_seed(config.seed + k)
        member = configured_model(config, dataset)
        fits.append(
            fit_epochs(
                member,
                x=x,
                y=y,
                epochs=epochs,
                batch_size=config.batch_size,
                on_epoch=_log_refit_epoch if k == 0 else None,
            )
        )
        members.append(member)
    model = members[0] if len(members) == 1 else average_models(members)
    fit = dataclasses.replace(fits[0], fit_seconds=sum(f.fit_seconds for f in fits))
    return Refit(model=model, scaler=scaler, rows=rows, held=held, fit=fit)


def _refit_range(dataset: Dataset, rows: range) -> tuple[str, str]:
    """First candle a refit window reads, and the last candle whose label it learnt."""
    index = dataset.candles.index
    first = rows.start - dataset.sequence_length + 1
    return index[first].isoformat(), index[rows.stop - 1 + dataset.horizon].isoformat()


def _log_refit(dataset: Dataset, refit: Refit | None, *, held_out: FitResult) -> None:
    """`refit` and `refit_epochs` params; with a refit, its data range, its learnt and held
    samples (ties dropped) and its final loss."""
    epochs = refit.fit.epochs_run if refit is not None else refit_epochs(held_out)
    mlflow.log_params({"refit": str(refit is not None).lower(), "refit_epochs": epochs})
    if refit is None:
        return
    start, end = _refit_range(dataset, refit.rows)
    mlflow.set_tags({"refit_data_start": start, "refit_data_end": end})
    mlflow.log_metrics(
        {
            "refit_final_loss": refit.fit.history["loss"][-1],
            "refit_rows": float(len(decided_rows(dataset, refit.rows))),
            "refit_held_rows": float(len(decided_rows(dataset, refit.held))),
            "refit_fit_seconds": refit.fit.fit_seconds,
        }
    )


def _refit_metadata(dataset: Dataset, refit: Refit, *, held_out: dict[str, Any]) -> dict[str, Any]:
    """What a refit bundle says in place of the held-out model's metadata `held_out`: its own
    windows, `fit_end` and calibration; the held-out model's metrics and verdict stay."""
    start, end = _refit_range(dataset, refit.rows)
    return {
        "refit": True,
        "refit_epochs": refit.fit.epochs_run,
        "refit_window": {**_window(dataset, refit.rows), "data_start": start},
        # The bundle's model learnt every label through `fit_end`; the newest samples after it,
        # which it never learnt, are its test window: the gate scores the refit itself there.
        "fit_end": end,
        "test_window": _window(dataset, refit.held),
        # What `test_metrics`, `beats_verdict` and `beats_baseline` speak for: the held-out
        # model, which learnt nothing after its own `fit_end`.
        "held_out": {
            "fit_end": held_out["fit_end"],
            "test_window": held_out["test_window"],
        },
        "calibration": {
            "method": refit.calibrator.method,
            "kept": False,
            "reason": "a refit gets no calibrator of its own and never borrows the held-out "
            "model's, which was chosen for other weights: it serves its network's own "
            "probabilities",
            "held_out": held_out.get("calibration"),
        },
    }


def _calibration_record(result: FoldResult) -> dict[str, Any]:
    """The test rows' reliability curves and ECE, raw and calibrated, with the choice made."""
    y = result.scores.y
    calibrated = result.scores.predictions[MODEL].proba

    def side(proba: Any) -> dict[str, Any]:
        return {
            "ece": expected_calibration_error(proba, y, DEFAULT_BINS),
            "curve": [b.to_dict() for b in reliability_curve(proba, y, bins=DEFAULT_BINS)],
        }

    return {
        "rows": int(y.size),
        "bins": DEFAULT_BINS,
        "choice": result.calibration.to_dict(),
        "calibrator": result.calibrator.to_dict(),
        "before": side(result.raw_proba),
        "after": side(calibrated),
    }


def _log_calibration(result: FoldResult, *, settings: Settings) -> None:
    """Params `calibration` (served), `calibration_mode` (asked) and `calibration_kept`; ECE on
    the test rows; the held-half interval that decided; the curves."""
    report = result.calibration
    record = _calibration_record(result)
    mlflow.log_params(
        {
            "calibration": report.method,
            "calibration_mode": settings.calibration,
            "calibration_kept": str(report.kept).lower(),
        }
    )
    held: dict[str, float] = {}
    if report.held is not None:
        held = {
            "calibration_held_rows": float(report.held.rows),
            "calibration_held_diff": report.held.mean,
            "calibration_held_diff_low": report.held.low,
            "calibration_held_diff_high": report.held.high,
            **{
                f"calibration_held_log_loss_{side}": loss
                for side, loss in report.held_log_loss.items()
            },
        }
    mlflow.log_metrics(
        {"ece_before": record["before"]["ece"], "ece_after": record["after"]["ece"], **held}
    )
    mlflow.log_dict(record, RELIABILITY_ARTIFACT)
    logger.info("calibration: %s (%s)", report.method, report.reason)


def _calibration_metadata(result: FoldResult) -> dict[str, Any]:
    """What the bundle says of the held-out model's calibrator (`calibration.json`) and how it
    was chosen; a refit's metadata replaces it with its own (none) and keeps this under
    `held_out`."""
    report = result.calibration
    return {
        "method": report.method,
        "mode": report.mode,
        "kept": report.kept,
        "reason": report.reason,
        "fitted_on": "validation rows",
        "rows": report.rows,
        "held": None if report.held is None else report.held.to_dict(),
        "held_log_loss": dict(report.held_log_loss),
    }


def _log_params(
    client: MlflowClient, run_id: str, config: TrainConfig, *, settings: Settings
) -> None:
    # `mlflow run` has logged the parameters given on its command line already, as typed;
    # MLflow refuses to change a logged parameter, so only the missing ones are added: the
    # settings' values of those left out, and the data directory actually read.
    present = client.get_run(run_id).data.params
    values = {
        **config.params(),
        "data_dir": str(config.data_dir or settings.data_dir),
        "feature_set": config.feature_set or settings.feature_set_for(config.model_type),
    }
    params = {
        key: (str(value).lower() if isinstance(value, bool) else value)
        for key, value in values.items()
        if key not in present
    }
    if params:
        mlflow.log_params(params)


def _window(dataset: Dataset, rows: range) -> dict[str, Any]:
    index = dataset.candles.index
    return {
        "start": index[rows.start].isoformat(),
        "end": index[rows.stop - 1].isoformat(),
        "rows": len(rows),
    }


def _data_range(dataset: Dataset, split: Split) -> tuple[str, str]:
    index = dataset.candles.index
    last = min(split.test.stop - 1 + dataset.horizon, len(index) - 1)
    return index[dataset.first_row].isoformat(), index[last].isoformat()


def _tags(config: TrainConfig, dataset: Dataset, split: Split) -> dict[str, str]:
    commit, dirty = git_commit()
    start, end = _data_range(dataset, split)
    test = _window(dataset, split.test)
    return {
        "pair": config.pair,
        "model_type": config.model_type,
        "feature_set_version": dataset.spec.version,
        "data_range": f"{start} .. {end}",
        "test_window": f"{test['start']} .. {test['end']}",
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
    }


def _flat_metrics(result: FoldResult, split: Split) -> dict[str, float]:
    scores = result.scores
    values: dict[str, float] = {}
    for predictor, metrics in scores.metrics.items():
        prefix = "test" if predictor == MODEL else f"baseline_{predictor}"
        values.update({f"{prefix}_{k}": v for k, v in metrics.items()})
    for strategy, backtest in scores.trading.items():
        values.update({f"{strategy}_{k}": v for k, v in backtest.metrics.items()})
    values.update(
        {
            "best_epoch": float(result.fit.best_epoch),
            "epochs_run": float(result.fit.epochs_run),
            "fit_seconds": result.fit.fit_seconds,
            "train_rows": float(len(split.train)),
            "val_rows": float(len(split.val)),
            "test_rows": float(len(split.test)),
        }
    )
    return values


def _metadata(
    config: TrainConfig,
    dataset: Dataset,
    split: Split,
    result: FoldResult,
    settings: Settings,
    run_id: str,
    name: str,
) -> dict[str, Any]:
    scores = result.scores
    start, end = _data_range(dataset, split)
    index = dataset.candles.index
    return {
        "pair": config.pair,
        "model_type": config.model_type,
        "registered_model": name,
        "run_id": run_id,
        "sequence_length": dataset.sequence_length,
        "horizon": dataset.horizon,
        "feature_set_version": dataset.spec.version,
        "n_features": len(dataset.spec.names),
        "data_range": {"start": start, "end": end},
        "train_window": _window(dataset, split.train),
        "val_window": _window(dataset, split.val),
        "test_window": _window(dataset, split.test),
        # The last candle whose value reached training: the validation part's last label
        # (a refit replaces it and the test window with its own: `_refit_metadata`).
        "fit_end": index[split.val.stop - 1 + dataset.horizon].isoformat(),
        "refit": False,
        "test_metrics": scores.metrics[MODEL],
        "baseline_metrics": {k: v for k, v in scores.metrics.items() if k != MODEL},
        "strongest_baseline": scores.strongest_baseline,
        "beats_baseline": scores.beats_baseline,
        # The paired verdict behind `beats_baseline` (verdict/verdict.json of the run).
        "beats_verdict": verdicts.record(scores),
        "promotion_metric": scores.metric,
        "trading": {k: b.metrics for k, b in scores.trading.items()},
        "buy_threshold": settings.buy_threshold,
        "sell_threshold": settings.sell_threshold,
        # The magnitude gate of the signal (`pipelines.pyfunc_model.signal_rules` reads both).
        "move_gate": settings.move_gate,
        "move_threshold": settings.move_threshold,
        "trading_fee": settings.trading_fee,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in config.params().items()},
        "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "lightgbm_version": _lightgbm_version(),
    }


def _lightgbm_version() -> str:
    import lightgbm

    return str(lightgbm.__version__)


def _log_artifacts(
    result: FoldResult,
    dataset: Dataset,
    split: Split,
    metadata: dict[str, Any],
    config: TrainConfig,
    refit: Refit | None,
) -> tuple[str, str]:
    """Plots, summary, the Keras model and the pyfunc model; returns the latter's URI and id.

    The plots, the verdict's per-row predictions and the summary's scores are the held-out
    model's; the bundle and the Keras model are the refit's when there is one.
    """
    scores = result.scores
    if refit is None:
        model, scaler, check = result.model, result.scaler, result.x_test
    elif isinstance(refit.model, TabularModel):
        model, scaler = refit.model, refit.scaler
        check = short_windows(dataset, refit.scaler, split.test)
    else:
        model, scaler = refit.model, refit.scaler
        check = windows(dataset, refit.scaler, split.test)
    # The logistic baseline ships beside the model it accompanies: fitted on the rows and with
    # the scaler of the bundle's model (the held-out run's training rows, or the refit's).
    baseline = logistic_baseline(
        dataset, split.train if refit is None else refit.rows, scaler, seed=config.seed
    )
    magnitude = fit_head(
        dataset,
        split.train if refit is None else refit.rows,
        scaler,
        threshold=float(metadata["magnitude"]["threshold"]),
        seed=config.seed,
    )
    test_index = sample_times(dataset, split.test)  # the scored rows: ties left out
    with tempfile.TemporaryDirectory(prefix="tbml-run-") as tmp:
        root = Path(tmp)
        plots.learning_curves(
            result.fit.history,
            best_epoch=result.fit.best_epoch,
            path=root / "plots/learning_curves.png",
        )
        plots.confusion_matrix(
            scores.y, scores.predictions[MODEL].pred, path=root / "plots/confusion_matrix.png"
        )
        plots.reliability(
            scores.y,
            {
                f"{MODEL} before calibration": result.raw_proba,
                f"{MODEL} calibrated ({result.calibrator.method})": scores.predictions[MODEL].proba,
                "logistic": scores.predictions["logistic"].proba,
            },
            path=root / "plots/reliability.png",
        )
        plots.equity_curves(
            test_index,
            {
                # Drawn last, so it stays visible where it coincides with holding.
                "buy and hold": scores.trading["buy_hold"].equity,
                f"{MODEL} signals": scores.trading["signals"].equity,
            },
            path=root / "plots/equity.png",
        )
        mlflow.log_artifacts(str(root / "plots"), "plots")
        verdicts.log_artifacts(test_index, scores)
        exported: dict[str, Any] = {
            "directory": root / "bundle",
            "scaler": scaler,
            "spec": dataset.spec,
            "metadata": metadata,
            "check_windows": check,
            "calibrator": result.calibrator if refit is None else refit.calibrator,
            "baseline": baseline,
            "magnitude": magnitude,
        }
        if isinstance(model, TabularModel):
            bundle, diff = export_head_bundle(model, **exported)
            mlflow.log_metric("export_max_abs_diff", diff)
        else:
            bundle, diff = export_bundle(model, **exported)
            mlflow.log_metric("onnx_max_abs_diff", diff)
            # The Keras model, for fine-tuning; the registered model is the pyfunc below.
            model.save(root / KERAS_MODEL_FILE)
            mlflow.log_artifact(str(root / KERAS_MODEL_FILE), KERAS_ARTIFACT_PATH)
        # Its input example is the newest candles, as the service would read them.
        info = log_candle_model(bundle.directory, candles=dataset.candles)
    title = f"{config.pair} {config.model_type}"
    facts = {
        "feature set": f"{dataset.spec.version} ({len(dataset.spec.names)} features)",
        "data range": f"{metadata['data_range']['start']} .. {metadata['data_range']['end']}",
        "test window": f"{metadata['test_window']['start']} .. {metadata['test_window']['end']} "
        f"({len(split.test)} rows)",
        "split": f"train {len(split.train)}, validation {len(split.val)}, test {len(split.test)} "
        f"samples; purge gap {dataset.gap} candles between parts",
        "epochs": (
            f"{result.fit.epochs_run} run, weights of epoch {result.fit.best_epoch + 1} kept"
            if config.model_type not in TABULAR_TYPES
            else f"{result.fit.epochs_run} boosting rounds run, {result.fit.best_epoch + 1} kept"
        ),
        "calibration": f"{result.calibration.method} ({result.calibration.reason})",
    }
    if refit is not None:
        start, end = _refit_range(dataset, refit.rows)
        facts["registered model"] = (
            f"refit on the samples {start} .. {end} for {refit.fit.epochs_run} epochs, the "
            f"newest {len(decided_rows(dataset, refit.held))} held out for the gate; the scores "
            "above are the held-out model's"
        )
    mlflow.log_text(run_summary(title=title, scores=scores, facts=facts), "summary.md")
    return str(info.model_uri), str(info.model_id)


def _log_dataset(
    config: TrainConfig, dataset: Dataset, split: Split, *, settings: Settings
) -> None:
    """The candles that trained and tested the model, as the run's input dataset.

    Rows from the first one whose features reach a sample through the last label read (the
    run's `data_range`); the earlier warm-up candles only feed the indicators. The source is
    the candle file (several, comma-separated, when ingested candles extend the bundled ones).
    """
    start, end = _data_range(dataset, split)
    candles = dataset.candles.loc[start:end]
    store = candle_store(config, settings=settings)
    paths = [
        path.resolve()
        for path in (
            store.bundled_path(config.pair, settings.timeframe),
            store.ingested_path(config.pair, settings.timeframe),
        )
        if path.is_file()
    ]
    source = ",".join(str(p) for p in paths)
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and says so on every path it resolves.
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        data = from_pandas(
            candles.reset_index(),
            source=source,
            name=f"{config.pair}-{settings.timeframe}-candles",
            # Ours: MLflow's own digest calls pandas in a way pandas 3 deprecates, and it
            # ignores the timestamps, which are what tells two candle ranges apart.
            digest=_digest(candles),
        )
    mlflow.log_input(data, context="training")
    mlflow.log_params({"dataset_rows": len(candles)})
    mlflow.set_tags(
        {
            "dataset_name": data.name,
            "dataset_digest": data.digest,
            "dataset_source": source,
            "dataset_first_candle": pd.Timestamp(candles.index[0]).isoformat(),
            "dataset_last_candle": pd.Timestamp(candles.index[-1]).isoformat(),
        }
    )


def _digest(candles: pd.DataFrame) -> str:
    """A short fingerprint of the candles, timestamps included."""
    hashed = pd.util.hash_pandas_object(candles, index=True).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:12]


def _register_and_promote(
    client: MlflowClient,
    *,
    config: TrainConfig,
    settings: Settings,
    name: str,
    run_id: str,
    model_uri: str,
    model_id: str,
    scores: Scores,
    candles: pd.DataFrame,
    refit: bool,
    feature_set_version: str,
) -> TrainingOutcome:
    if not config.register:
        return TrainingOutcome(
            run_id, scores, None, None, "not_registered", "registration not requested", None
        )
    ensure_registered_model(client, name=name, pair=config.pair, model_type=config.model_type)
    metric = scores.metric
    model_value = scores.metrics[MODEL][metric]
    baseline_value = scores.metrics[scores.strongest_baseline][metric]
    paired = scores.verdict
    version = register_version(
        client,
        name=name,
        model_uri=model_uri,
        model_id=model_id,
        run_id=run_id,
        tags={
            "pair": config.pair,
            "model_type": config.model_type,
            TAG_BEATS_BASELINE: str(scores.beats_baseline).lower(),
            **verdicts.verdict_tags(scores),
            "feature_set_version": feature_set_version,
            TAG_REFIT: str(refit).lower(),
        },
        description=(
            ("Refit (newest samples held out for the gate); held-out run: " if refit else "")
            + f"{config.pair} {config.model_type}: test {metric} {model_value:.4f}, strongest "
            f"baseline {scores.strongest_baseline} {baseline_value:.4f}, accuracy "
            f"{scores.metrics[MODEL]['accuracy']:.4f} on {scores.y.size} rows; log loss per row "
            f"minus the baseline's {paired.mean:+.4f} [{paired.low:+.4f}, {paired.high:+.4f}] "
            f"({'beats' if scores.beats_baseline else 'does not beat'} it)"
        ),
    )
    if not config.promote:
        return TrainingOutcome(
            run_id, scores, name, version, "not_requested", "promotion not requested", None
        )
    decision = apply_gate(client, name=name, version=version, candles=candles, settings=settings)
    return TrainingOutcome(
        run_id, scores, name, version, decision.outcome, decision.reason, decision
    )
