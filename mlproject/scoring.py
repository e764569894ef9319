"""Scoring on a held-out window: the model beside the baselines, and its signals beside holding.

Nothing here imports TensorFlow: the promotion gate and the bundle tests score ONNX bundles with
the same functions the training run uses for the Keras model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlproject import baselines
from mlproject.data import Dataset, Split, labels
from mlproject.metrics import best_of, classification_metrics, is_better
from mlproject.trading import (
    Backtest,
    backtest,
    buy_and_hold,
    periods_per_year,
    positions_from_signals,
    signals_from_proba,
)
from pipelines.features.compute import compute_features
from pipelines.features.scaler import FeatureScaler
from pipelines.features.windows import make_targets
from pipelines.modelbundle import ModelBundle
from pipelines.settings import Settings

MODEL = "model"


@dataclass(frozen=True)
class Scores:
    """Metrics of the model and every baseline on the same rows, and the trading results."""

    y: np.ndarray
    predictions: dict[str, baselines.Prediction]
    metrics: dict[str, dict[str, float]]
    trading: dict[str, Backtest]
    metric: str
    strongest_baseline: str
    beats_baseline: bool


def fit_baselines(
    dataset: Dataset, split: Split, scaler: FeatureScaler, *, seed: int
) -> dict[str, baselines.Prediction]:
    """The baselines fitted on the training rows, predicting the test rows."""
    y_train = labels(dataset, split.train)
    close = dataset.close
    train_rows = np.arange(split.train.start, split.train.stop)
    test_rows = np.arange(split.test.start, split.test.stop)
    # A last move needs close[t - horizon]; the first training rows may lack it.
    seen = train_rows[train_rows >= dataset.horizon]
    return {
        "majority": baselines.majority(y_train=y_train, rows=len(split.test)),
        "persistence": baselines.persistence(
            last_up_train=baselines.last_move_up(close, seen, horizon=dataset.horizon),
            y_train=y_train[train_rows >= dataset.horizon],
            last_up=baselines.last_move_up(close, test_rows, horizon=dataset.horizon),
        ),
        "logistic": baselines.logistic(
            x_train=scaler.transform(dataset.features[split.train.start : split.train.stop]),
            y_train=y_train,
            x=scaler.transform(dataset.features[split.test.start : split.test.stop]),
            seed=seed,
        ),
    }


def score(
    *,
    y: np.ndarray,
    model_proba: np.ndarray,
    baseline_predictions: dict[str, baselines.Prediction],
    returns: np.ndarray,
    settings: Settings,
) -> Scores:
    """Score the model and the baselines on the same labels; backtest the model's signals."""
    predictions = {
        MODEL: baselines.Prediction(
            proba=np.asarray(model_proba, dtype=np.float64),
            pred=(np.asarray(model_proba) >= 0.5).astype(np.int8),
        ),
        **baseline_predictions,
    }
    metrics = {
        name: classification_metrics(y_true=y, proba=p.proba, pred=p.pred)
        for name, p in predictions.items()
    }
    metric = settings.promotion_metric
    strongest = best_of(metric, {n: m[metric] for n, m in metrics.items() if n != MODEL})
    model_value, baseline_value = metrics[MODEL][metric], metrics[strongest][metric]
    beats = is_better(metric, model_value, baseline_value) and model_value != baseline_value
    return Scores(
        y=np.asarray(y),
        predictions=predictions,
        metrics=metrics,
        trading=trade(model_proba=model_proba, returns=returns, settings=settings),
        metric=metric,
        strongest_baseline=strongest,
        beats_baseline=bool(beats),
    )


def trade(
    *, model_proba: np.ndarray, returns: np.ndarray, settings: Settings
) -> dict[str, Backtest]:
    """The model's BUY/SELL/HOLD signals at the service's thresholds, and buy-and-hold."""
    per_year = periods_per_year(settings.timeframe)
    signals = signals_from_proba(
        model_proba,
        buy_threshold=settings.buy_threshold,
        sell_threshold=settings.sell_threshold,
    )
    return {
        "signals": backtest(
            positions=positions_from_signals(signals),
            returns=returns,
            fee=settings.trading_fee,
            periods_per_year=per_year,
        ),
        "buy_hold": buy_and_hold(
            returns=returns, fee=settings.trading_fee, periods_per_year=per_year
        ),
    }


@dataclass(frozen=True)
class WindowScore:
    """A bundle's probabilities on the rows ending at `timestamps`, with their labels."""

    timestamps: pd.DatetimeIndex
    y: np.ndarray
    proba: np.ndarray


def score_bundle(
    bundle: ModelBundle,
    *,
    candles: pd.DataFrame,
    timestamps: pd.DatetimeIndex,
    horizon: int,
) -> WindowScore:
    """Predict with `bundle` (ONNX) for the samples ending at `timestamps`.

    Features are computed over the full candle history with the bundle's own spec, scaled with
    its scaler and cut into its own sequence length, so models of different shapes are scored
    on the same rows and labels.
    """
    positions = candles.index.get_indexer(timestamps)
    if (positions < 0).any():
        missing = timestamps[positions < 0]
        raise ValueError(f"{len(missing)} scored rows are not in the candles, first {missing[0]}")
    features = compute_features(candles, spec=bundle.spec).to_numpy(dtype=np.float64)
    length = bundle.sequence_length
    if positions.min() - length + 1 < 0:
        raise ValueError("the first scored row has too little history for a window")
    windows = np.stack([features[p - length + 1 : p + 1] for p in positions])
    if not np.isfinite(windows).all():
        raise ValueError("the scored windows reach into the feature warm-up rows")
    target = make_targets(candles, horizon=horizon).to_numpy()[positions]
    if np.isnan(target).any():
        raise ValueError(f"the newest scored rows have no label yet (horizon {horizon})")
    return WindowScore(
        timestamps=timestamps, y=target.astype(np.int8), proba=bundle.predict_proba(windows)
    )
