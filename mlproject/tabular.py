"""The model types of each window's last feature row: LightGBM, logistic regression, their blend,
and one LightGBM trained on every configured pair (`pooled`).

They fit on the scaled features of each sample's last step, the same samples, splits and scaler
a network of the same pair gets, and they export as a head (`pipelines.heads`) the service
serves without TensorFlow or LightGBM (a booster is converted to ONNX as soon as it is fitted,
so the scores, the verdict and the served model read the same probabilities). Each fit returns
a `TabularModel` (its head) and a `FitResult`
(boosting rounds in place of epochs), so a training, its refit and every evaluation fold treat
them as they treat a network.

- `lightgbm`: regularised gradient boosting (`BOOSTER_PARAMS`: 7 leaves, at least 400 rows a
  leaf, row and column subsampling, L2 10, learning rate 0.01), at most `MAX_ROUNDS` rounds,
  early-stopped on the validation rows; a refit boosts for the rounds early stopping kept.
- `logistic`: L2 logistic regression (C=1), the project's logistic baseline as a model.
- `blend`: the two above, weighted by the weight of lowest validation log loss on a grid.
- `pooled`: one LightGBM on the rows of every configured pair in the same time span, with a
  categorical pair column; the bundle serves its own pair's code. A pair whose candles are
  missing or short still trains (on the others' rows and its own) and serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlproject import baselines
from mlproject.data import Dataset, NotEnoughDataError, decided_rows, fit_scaler_on, labels
from mlproject.fit_result import FitResult
from pipelines.features.scaler import FeatureScaler
from pipelines.heads import (
    POOLED_FILE,
    BlendHead,
    Head,
    LightGBMHead,
    LogisticHead,
)
from pipelines.lifecycle.scores import log_losses

logger = logging.getLogger(__name__)

# Steps of each window a tabular model reads: the last one (its features already look back).
LAGS = 1
MAX_ROUNDS = 2000
EARLY_STOPPING_ROUNDS = 200
MIN_LEAF_ROWS = 400
BOOSTER_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.01,
    "num_leaves": 7,
    "bagging_fraction": 0.7,
    "bagging_freq": 1,
    "feature_fraction": 0.5,
    "lambda_l2": 10.0,
    "max_bin": 63,
    "deterministic": True,
    "force_row_wise": True,
    # One thread: at these sizes a second one buys little, and when the cores are busy
    # (a service, a test run) OpenMP's spinning threads made each round twenty times slower.
    "num_threads": 1,
    "verbosity": -1,
}
# The ai.onnx opset of a converted booster (onnxruntime's TreeEnsembleClassifier reads it).
ONNX_OPSET = 15
# Blend weights of the LightGBM member tried on the validation rows (the rest is logistic).
BLEND_GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))


@dataclass(frozen=True)
class TabularModel:
    """A fitted tabular model: its head, and what the refit needs to repeat the fit."""

    head: Head
    rounds: int = 0  # boosting rounds kept (0: no booster)
    weights: tuple[float, ...] = ()  # a blend's member weights

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """p(up) of scaled windows (any length of at least `LAGS` steps)."""
        return np.asarray(self.head.proba(windows), dtype=np.float64)


@dataclass(frozen=True)
class Part:
    """Scaled last-step windows (n, LAGS, F) and 0/1 labels of some samples."""

    x: np.ndarray
    y: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return self.x.reshape(len(self.x), -1)


def short_windows(dataset: Dataset, scaler: FeatureScaler, rows: range) -> np.ndarray:
    """The last `LAGS` scaled feature rows of each window ending on `decided_rows(rows)`."""
    at = decided_rows(dataset, rows)
    steps = [scaler.transform(dataset.features[at - k]) for k in range(LAGS - 1, -1, -1)]
    return np.ascontiguousarray(np.stack(steps, axis=1), dtype=np.float32)


def part(dataset: Dataset, scaler: FeatureScaler, rows: range) -> Part:
    return Part(x=short_windows(dataset, scaler, rows), y=labels(dataset, rows))


def leaf_rows(n: int) -> int:
    """Rows a leaf needs: `MIN_LEAF_ROWS`, less on small data so a tree can split at all."""
    return max(1, min(MIN_LEAF_ROWS, n // 20))


def fit_booster(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    rounds: int | None = None,
    categorical: list[int] | None = None,
) -> tuple[Any, FitResult]:
    """A regularised LightGBM booster on 2-D rows: early-stopped on (x_val, y_val) when given,
    else boosted for exactly `rounds` rounds. The history holds the log loss per round."""
    import lightgbm as lgb

    y = np.asarray(y, dtype=np.float64)
    params = {**BOOSTER_PARAMS, "min_data_in_leaf": leaf_rows(len(y)), "seed": seed}
    train = lgb.Dataset(
        np.asarray(x, dtype=np.float64),
        label=y,
        categorical_feature=categorical or "auto",
        free_raw_data=True,
    )
    record: dict[str, dict[str, list[float]]] = {}
    callbacks: list[Callable[..., Any]] = [lgb.record_evaluation(record)]
    valid_sets, names = [train], ["train"]
    if x_val is not None and y_val is not None:
        valid = lgb.Dataset(
            np.asarray(x_val, dtype=np.float64),
            label=np.asarray(y_val, dtype=np.float64),
            reference=train,
        )
        valid_sets.append(valid)
        names.append("valid")
        callbacks.append(lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False))
    started = time.perf_counter()
    booster = lgb.train(
        {**params, "metric": "binary_logloss"},
        train,
        num_boost_round=rounds if rounds is not None else MAX_ROUNDS,
        valid_sets=valid_sets,
        valid_names=names,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - started
    history = {"loss": [float(v) for v in record.get("train", {}).get("binary_logloss", [])]}
    if "valid" in record:
        history["val_loss"] = [float(v) for v in record["valid"]["binary_logloss"]]
    run = len(history["loss"])
    best = int(booster.best_iteration or run)
    if x_val is not None:
        booster = _trimmed(booster, best)
    return booster, FitResult(
        history=history, best_epoch=best - 1, epochs_run=run, fit_seconds=seconds
    )


def to_onnx(booster: Any) -> bytes:
    """The booster converted to ONNX (onnxmltools), as served: probabilities as a plain
    (n, 2) tensor named `PROBABILITIES`."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    width = int(booster.num_feature())
    model = convert_lightgbm(
        booster,
        initial_types=[("rows", FloatTensorType([None, width]))],
        target_opset=ONNX_OPSET,
        zipmap=False,
    )
    return bytes(model.SerializeToString())


def _trimmed(booster: Any, rounds: int) -> Any:
    """The booster with only its first `rounds` trees (what early stopping kept)."""
    import lightgbm as lgb

    return lgb.Booster(model_str=booster.model_to_string(num_iteration=rounds))


def _logistic(train: Part, *, seed: int) -> LogisticHead:
    coef, intercept = baselines.fit_logistic(x_train=train.rows, y_train=train.y, seed=seed)
    return LogisticHead(coef=coef, intercept=intercept, lags=LAGS)


def _one_class(y: np.ndarray) -> bool:
    return np.unique(np.asarray(y)).size < 2


def fit_lightgbm(
    train: Part, val: Part | None, *, seed: int, rounds: int | None = None
) -> tuple[TabularModel, FitResult]:
    """`lightgbm`: early-stopped on `val`, or `rounds` rounds without it (a refit)."""
    if _one_class(train.y):  # nothing to split on: the logistic limit, the training rate
        constant = _logistic(train, seed=seed)
        return TabularModel(head=constant), _flat_fit(train, val, constant)
    booster, fit = fit_booster(
        train.rows,
        train.y,
        seed=seed,
        x_val=None if val is None else val.rows,
        y_val=None if val is None else val.y,
        rounds=rounds,
    )
    boosted = LightGBMHead(onnx_model=to_onnx(booster), lags=LAGS)
    return TabularModel(head=boosted, rounds=fit.best_epoch + 1), fit


def fit_logistic(train: Part, val: Part | None, *, seed: int) -> tuple[TabularModel, FitResult]:
    """`logistic`: one fit, no rounds."""
    started = time.perf_counter()
    head = _logistic(train, seed=seed)
    fit = _flat_fit(train, val, head, seconds=time.perf_counter() - started)
    return TabularModel(head=head), fit


def _flat_fit(train: Part, val: Part | None, head: Head, *, seconds: float = 0.0) -> FitResult:
    history = {"loss": [float(np.mean(log_losses(head.proba(train.x), train.y)))]}
    if val is not None and len(val.y):
        history["val_loss"] = [float(np.mean(log_losses(head.proba(val.x), val.y)))]
    return FitResult(history=history, best_epoch=0, epochs_run=1, fit_seconds=seconds)


def choose_weight(
    y: np.ndarray, boosted: np.ndarray, linear: np.ndarray
) -> tuple[float, dict[float, float]]:
    """The LightGBM weight of `BLEND_GRID` whose blend has the lowest mean log loss on `y`,
    and every weight's loss. Ties go to the smaller weight (the simpler model)."""
    losses = {
        w: float(np.mean(log_losses(w * boosted + (1.0 - w) * linear, y))) for w in BLEND_GRID
    }
    best = min(losses, key=lambda w: (losses[w], w))
    return best, losses


def fit_blend(
    train: Part,
    val: Part | None,
    *,
    seed: int,
    rounds: int | None = None,
    weights: tuple[float, ...] = (),
) -> tuple[TabularModel, FitResult]:
    """`blend`: LightGBM and logistic regression, weighted on `val` (a refit keeps `weights`)."""
    boosted, fit = fit_lightgbm(train, val, seed=seed, rounds=rounds)
    linear = _logistic(train, seed=seed)
    if not weights:
        if val is None or not len(val.y):
            raise ValueError("a blend chooses its weights on validation rows; none were given")
        w, losses = choose_weight(val.y, boosted.predict(val.x), linear.proba(val.x))
        weights = (w, 1.0 - w)
        logger.info("blend: LightGBM weight %.1f (validation log loss %.5f)", w, losses[w])
    head = BlendHead(members=(boosted.head, linear), weights=weights)
    return TabularModel(head=head, rounds=boosted.rounds, weights=weights), fit


# --- pooled: every configured pair's rows -----------------------------------------------------


@dataclass(frozen=True)
class PooledRows:
    """Rows of every pair for one span of time, with each pair's code in the pair column."""

    x: np.ndarray  # (n, LAGS * F + 1): the lagged features, then the pair code
    y: np.ndarray


def pooled_rows(parts: dict[str, Part], pairs: tuple[str, ...]) -> PooledRows:
    """Stack `parts` (pair -> its rows) with each pair's index in `pairs` as the last column."""
    blocks, ys = [], []
    for pair, p in parts.items():
        if not len(p.y):
            continue
        code = np.full((len(p.y), 1), float(pairs.index(pair)))
        blocks.append(np.hstack([p.rows, code]))
        ys.append(p.y)
    if not blocks:
        raise NotEnoughDataError("no pair has rows in this span")
    return PooledRows(x=np.vstack(blocks), y=np.concatenate(ys))


def rows_between(dataset: Dataset, start: pd.Timestamp | None, end: pd.Timestamp) -> range:
    """The sample rows of `dataset` whose candle time lies in [start, end] (start None: from
    the first sample)."""
    index = dataset.candles.index
    samples = dataset.samples
    if not len(samples):
        return range(0, 0)
    first = samples.start if start is None else max(samples.start, int(index.searchsorted(start)))
    last = min(samples.stop, int(index.searchsorted(end, side="right")))
    return range(first, max(first, last))


@dataclass(frozen=True)
class Pool:
    """The other pairs' datasets a pooled model of `pair` learns from, and the pairs' order."""

    pair: str
    pairs: tuple[str, ...]
    others: dict[str, Dataset]

    def parts(
        self,
        own: Dataset,
        own_scaler: FeatureScaler,
        own_rows: range,
        *,
        start: pd.Timestamp | None,
        end: pd.Timestamp,
        scaled_until: pd.Timestamp,
    ) -> dict[str, Part]:
        """Every pair's rows in [start, end]: this pair's `own_rows`, and each other pair's
        samples in that span, scaled with a scaler fitted on that pair's rows up to
        `scaled_until` (the end of the training span: no later row informs the scaling)."""
        result = {self.pair: part(own, own_scaler, own_rows)}
        for name, data in self.others.items():
            rows = rows_between(data, start, end)
            fitted = rows_between(data, None, scaled_until)
            if len(decided_rows(data, rows)) == 0 or not len(fitted):
                continue
            result[name] = part(data, fit_scaler_on(data, fitted), rows)
        return result


def fit_pooled(
    pool: Pool,
    train: dict[str, Part],
    val: dict[str, Part] | None,
    *,
    seed: int,
    rounds: int | None = None,
) -> tuple[TabularModel, FitResult]:
    """`pooled`: one booster on every pair's rows (early-stopped on every pair's validation
    rows), served with this pair's code."""
    rows = pooled_rows(train, pool.pairs)
    valid = pooled_rows(val, pool.pairs) if val else None
    categorical = [rows.x.shape[1] - 1]
    booster, fit = fit_booster(
        rows.x,
        rows.y,
        seed=seed,
        x_val=None if valid is None else valid.x,
        y_val=None if valid is None else valid.y,
        rounds=rounds,
        categorical=categorical,
    )
    head = LightGBMHead(
        onnx_model=to_onnx(booster),
        lags=LAGS,
        pair_index=pool.pairs.index(pool.pair),
        pairs=pool.pairs,
        file=POOLED_FILE,
    )
    return TabularModel(head=head, rounds=fit.best_epoch + 1), fit
