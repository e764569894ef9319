"""One split, end to end: scale, window, fit, calibrate, predict the test rows, score them.

The calibrator is chosen on the validation rows (`settings.calibration`,
`pipelines.calibration.choose_calibrator`: kept only when it helps on held validation rows, the
identity otherwise) and the test rows are scored with the served probabilities: what the bundle
serves is what the metrics, verdicts and gate see. Every part's rows leave ties out
(`mlproject.data.decided_rows`): the model, its calibrator and the baselines learn and are
scored on the same up-or-down rows.

The training run and every fold of the walk-forward evaluation go through `fit_and_score`, so
what the evaluation reports is what a training does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TypeAlias

import keras
import numpy as np

from mlproject import baselines, tabular
from mlproject.architectures import average_models, build_model
from mlproject.config import TrainConfig
from mlproject.data import (
    Dataset,
    NotEnoughDataError,
    Split,
    fit_scaler,
    labels,
    next_returns,
    time_split,
    walk_forward_splits,
    windows,
)
from mlproject.fit import EpochSink, FitResult, fit_model, make_deterministic
from mlproject.scoring import MODEL, Scores, fit_baselines, required_baselines, score
from mlproject.tabular import Pool, TabularModel
from pipelines.calibration import CalibrationReport, Calibrator, choose_calibrator
from pipelines.features.scaler import FeatureScaler
from pipelines.heads import BlendHead, LightGBMHead
from pipelines.settings import TABULAR_TYPES, Settings

Model: TypeAlias = keras.Model | TabularModel


@dataclass(frozen=True)
class FoldResult:
    """The fitted model, scaler and calibrator, the fit's history and the scores on the test rows.

    `scores` are of the served (calibrated, or raw when no calibrator was kept) probabilities;
    `raw_proba` are the model's own on the same test rows, before calibration.
    """

    split: Split
    model: Model
    scaler: FeatureScaler
    fit: FitResult
    x_test: np.ndarray
    scores: Scores
    raw_proba: np.ndarray
    calibrator: Calibrator
    calibration: CalibrationReport
    # A network's seeds: the epochs each kept (its refit trains each for as many).
    member_epochs: tuple[int, ...] = ()


def configured_model(config: TrainConfig, dataset: Dataset) -> keras.Model:
    """A fresh model of `config`'s architecture and hyperparameters for `dataset`'s windows."""
    return build_model(
        model_type=config.model_type,
        sequence_length=dataset.sequence_length,
        n_features=len(dataset.spec.names),
        units=config.units,
        layers=config.layers,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
    )


def fit_and_score(
    dataset: Dataset,
    split: Split,
    *,
    config: TrainConfig,
    settings: Settings,
    on_epoch: EpochSink | None = None,
    pool: Pool | None = None,
) -> FoldResult:
    """Fit `config`'s model on `split.train` (early stopping on `split.val`), calibrate it on
    `split.val`, score `split.test` with the calibrated probabilities.

    A `pooled` model also learns the other pairs' rows of the same spans (`pool`; loaded from
    the settings' pairs when None).
    """
    if config.model_type in TABULAR_TYPES:
        return _fit_and_score_tabular(dataset, split, config=config, settings=settings, pool=pool)
    make_deterministic(config.seed)
    scaler = fit_scaler(dataset, split)
    x_train, y_train = windows(dataset, scaler, split.train), labels(dataset, split.train)
    x_val, y_val = windows(dataset, scaler, split.val), labels(dataset, split.val)
    x_test, y_test = windows(dataset, scaler, split.test), labels(dataset, split.test)
    members, fits = [], []
    for k in range(settings.network_seeds):
        if k:  # the next seed's initialisation, dropout and shuffling
            keras.utils.set_random_seed(config.seed + k)
        member = configured_model(config, dataset)
        fits.append(
            fit_model(
                member,
                x_train=x_train,
                y_train=y_train,
                x_val=x_val,
                y_val=y_val,
                epochs=config.epochs,
                batch_size=config.batch_size,
                patience=settings.early_stopping_patience,
                on_epoch=on_epoch if k == 0 else None,
            )
        )
        members.append(member)
    # k seeds: one graph whose output is their mean probability (one ONNX file to serve).
    model = members[0] if len(members) == 1 else average_models(members)
    fit = replace(fits[0], fit_seconds=sum(f.fit_seconds for f in fits))
    return _calibrated_and_scored(
        dataset,
        split,
        config=config,
        settings=settings,
        model=model,
        scaler=scaler,
        fit=fit,
        val=(x_val, y_val),
        test=(x_test, y_test),
        member_epochs=tuple(f.best_epoch + 1 for f in fits),
    )


def predict(model: Model, x: np.ndarray) -> np.ndarray:
    """Probabilities of "up" as float64, one per window."""
    if isinstance(model, TabularModel):
        return model.predict(x)
    return np.asarray(model.predict(x, batch_size=1024, verbose=0), dtype=np.float64).reshape(-1)


def fit_tabular(
    dataset: Dataset,
    *,
    config: TrainConfig,
    scaler: FeatureScaler,
    train: range,
    val: range | None,
    pool: Pool | None,
    rounds: int | None = None,
    weights: tuple[float, ...] = (),
) -> tuple[TabularModel, FitResult]:
    """`config`'s tabular model fitted on the samples `train`: early-stopped on `val`, or, with
    `val` None (a refit), boosted for `rounds` rounds with the blend's `weights`."""
    seed, kind = config.seed, config.model_type
    if kind == "pooled":
        if pool is None:
            raise ValueError("a pooled model needs the other pairs' rows (a Pool)")
        index = dataset.candles.index
        end = index[train.stop - 1]
        train_parts = pool.parts(dataset, scaler, train, start=None, end=end, scaled_until=end)
        val_parts = None
        if val is not None:
            val_parts = pool.parts(
                dataset,
                scaler,
                val,
                start=index[val.start],
                end=index[val.stop - 1],
                scaled_until=end,
            )
        return tabular.fit_pooled(pool, train_parts, val_parts, seed=seed, rounds=rounds)
    train_part = tabular.part(dataset, scaler, train)
    val_part = None if val is None else tabular.part(dataset, scaler, val)
    if kind == "lightgbm":
        return tabular.fit_lightgbm(train_part, val_part, seed=seed, rounds=rounds)
    if kind == "logistic":
        return tabular.fit_logistic(train_part, val_part, seed=seed)
    if kind == "blend":
        return tabular.fit_blend(train_part, val_part, seed=seed, rounds=rounds, weights=weights)
    raise ValueError(f"{kind!r} is not a tabular model type ({', '.join(TABULAR_TYPES)})")


def _booster_proba(model: TabularModel, x: np.ndarray) -> np.ndarray | None:
    """The test probabilities of the model's own per-pair booster, when it is the LightGBM
    baseline's booster (same rows, parameters, seed and early stopping); else None."""
    head = model.head
    if isinstance(head, BlendHead):
        head = head.members[0]
    if isinstance(head, LightGBMHead) and head.pair_index is None:
        return head.proba(x)
    return None


def _fit_and_score_tabular(
    dataset: Dataset,
    split: Split,
    *,
    config: TrainConfig,
    settings: Settings,
    pool: Pool | None,
) -> FoldResult:
    if config.model_type == "pooled" and pool is None:
        from mlproject.loading import load_pool

        pool = load_pool(config, settings=settings)
    scaler = fit_scaler(dataset, split)
    model, fit = fit_tabular(
        dataset, config=config, scaler=scaler, train=split.train, val=split.val, pool=pool
    )
    x_val, y_val = tabular.short_windows(dataset, scaler, split.val), labels(dataset, split.val)
    x_test, y_test = tabular.short_windows(dataset, scaler, split.test), labels(dataset, split.test)
    return _calibrated_and_scored(
        dataset,
        split,
        config=config,
        settings=settings,
        model=model,
        scaler=scaler,
        fit=fit,
        val=(x_val, y_val),
        test=(x_test, y_test),
        lightgbm=_booster_proba(model, x_test),
    )


def _calibrated_and_scored(
    dataset: Dataset,
    split: Split,
    *,
    config: TrainConfig,
    settings: Settings,
    model: Model,
    scaler: FeatureScaler,
    fit: FitResult,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    lightgbm: np.ndarray | None = None,
    member_epochs: tuple[int, ...] = (),
) -> FoldResult:
    """A fitted model's calibrator chosen on the validation windows `val`, and its calibrated
    test probabilities scored beside the baselines (`lightgbm`: see `fit_baselines`)."""
    (x_val, y_val), (x_test, y_test) = val, test
    calibrator, report = choose_calibrator(
        predict(model, x_val), y_val.astype(np.int8), mode=settings.calibration
    )
    raw_proba = predict(model, x_test)
    scores = score(
        y=y_test.astype(np.int8),
        model_proba=calibrator.apply(raw_proba),
        baseline_predictions=fit_baselines(
            dataset, split, scaler, seed=config.seed, lightgbm=lightgbm
        ),
        returns=next_returns(dataset, split.test),
        settings=settings,
        required=required_baselines(config.model_type),
    )
    return FoldResult(
        split=split,
        model=model,
        scaler=scaler,
        fit=fit,
        x_test=x_test,
        scores=scores,
        raw_proba=raw_proba,
        calibrator=calibrator,
        calibration=report,
        member_epochs=member_epochs,
    )


def verdict_splits(dataset: Dataset, *, config: TrainConfig, settings: Settings) -> list[Split]:
    """The splits a training's verdict is judged on.

    A network: one time split (`ML_TEST_FRACTION`, `ML_VALIDATION_FRACTION`). A tabular model:
    `ML_VERDICT_FOLDS` walk-forward folds of `ML_VERDICT_TEST_ROWS` samples ending at the
    newest (fewer when the candles do not reach that far back), and the time split when not
    even two folds fit.
    """
    single = time_split(
        dataset, val_fraction=settings.validation_fraction, test_fraction=settings.test_fraction
    )
    if config.model_type not in TABULAR_TYPES:
        return [single]
    for folds in range(settings.verdict_folds, 1, -1):
        try:
            splits = walk_forward_splits(
                dataset,
                folds=folds,
                test_size=settings.verdict_test_rows,
                val_fraction=settings.validation_fraction,
            )
        except NotEnoughDataError:
            continue
        if len(splits[0].train) >= settings.verdict_test_rows:  # the oldest fold learns enough
            return splits
    return [single]


def fit_and_score_folds(
    dataset: Dataset,
    splits: list[Split],
    *,
    config: TrainConfig,
    settings: Settings,
    on_epoch: EpochSink | None = None,
    pool: Pool | None = None,
) -> FoldResult:
    """Every split fitted and scored in turn (time order): the newest split's model, scaler and
    calibrator, judged on the test rows of every split together.

    The splits' test windows must be consecutive (`walk_forward_splits`): the result's
    `split.test` is their union.
    """
    for before, after in itertools.pairwise(splits):
        if before.test.stop != after.test.start:
            raise ValueError("the folds' test windows must be consecutive")
    if config.model_type == "pooled" and pool is None:
        from mlproject.loading import load_pool

        pool = load_pool(config, settings=settings)
    results = [
        fit_and_score(
            dataset,
            split,
            config=config,
            settings=settings,
            on_epoch=on_epoch if i == len(splits) - 1 else None,
            pool=pool,
        )
        for i, split in enumerate(splits)
    ]
    newest = results[-1]
    if len(results) == 1:
        return newest
    names = [n for n in newest.scores.predictions if n != MODEL]
    joined = {
        name: baselines.Prediction(
            proba=np.concatenate([r.scores.predictions[name].proba for r in results]),
            pred=np.concatenate([r.scores.predictions[name].pred for r in results]),
        )
        for name in names
    }
    scores = score(
        y=np.concatenate([r.scores.y for r in results]),
        model_proba=np.concatenate([r.scores.predictions[MODEL].proba for r in results]),
        baseline_predictions=joined,
        returns=np.concatenate([next_returns(dataset, s.test) for s in splits]),
        settings=settings,
        required=required_baselines(config.model_type),
    )
    split = Split(
        train=newest.split.train,
        val=newest.split.val,
        test=range(splits[0].test.start, splits[-1].test.stop),
    )
    return replace(
        newest,
        split=split,
        scores=scores,
        raw_proba=np.concatenate([r.raw_proba for r in results]),
    )
