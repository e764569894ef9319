"""Scoring on a held-out window: the model beside the baselines, and its signals beside holding.

Whether the model beats its baselines is a paired verdict (`VerdictRule`): the per-row log-loss
differences, model minus baseline on the same rows in time order, through the lifecycle's paired
interval (`pipelines.lifecycle.intervals.paired_interval`, a Newey-West t-interval of the mean).
The model beats the baselines only when the 95 % interval against every one of them lies wholly
below `-promotion_margin`.
The verdict is judged on log loss whatever `promotion_metric` says (that one is the gate's,
against the production version): log loss is a per-row score, so a paired difference exists.

Nothing here imports TensorFlow: the promotion gate and the bundle tests score ONNX bundles with
the same functions the training run uses for the Keras model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlproject import baselines
from mlproject.data import Dataset, Split, decided_rows, labels
from mlproject.metrics import classification_metrics
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
from pipelines.lifecycle.intervals import LEVEL, METHOD, PairedVerdict, paired_interval
from pipelines.lifecycle.scores import decided, log_losses
from pipelines.modelbundle import ModelBundle
from pipelines.settings import NETWORK_TYPES, Settings

MODEL = "model"
VERDICT_METRIC = "log_loss"  # the per-row loss every "beats" is made of


@dataclass(frozen=True)
class VerdictRule:
    """How two forecasters on the same rows are compared: the paired interval at `level`,
    which must lie wholly beyond `margin` (nats per row) for a verdict."""

    margin: float
    level: float = LEVEL

    @classmethod
    def from_settings(cls, settings: Settings) -> VerdictRule:
        return cls(margin=settings.promotion_margin)

    def compare(self, y: np.ndarray, first: np.ndarray, second: np.ndarray) -> PairedVerdict:
        """Per-row log loss of `first` minus that of `second` on outcomes `y`, through
        `paired_interval`."""
        outcomes = np.asarray(y)
        differences = log_losses(np.asarray(first), outcomes) - log_losses(
            np.asarray(second), outcomes
        )
        return paired_interval(differences, level=self.level)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": VERDICT_METRIC,
            "method": METHOD,
            "margin": self.margin,
            "level": self.level,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerdictRule:
        """A rule as `to_dict` wrote it. Rules saved when verdicts were bootstrapped also hold a
        block, resamples and a seed: those are ignored, the margin and level kept."""
        return cls(margin=float(data["margin"]), level=float(data.get("level", LEVEL)))


@dataclass(frozen=True)
class Judgement:
    """The model against each baseline, the strongest of them, and whether it beats them all."""

    verdicts: dict[str, PairedVerdict]  # model minus baseline, per baseline
    strongest_baseline: str
    beats_baseline: bool

    @property
    def verdict(self) -> PairedVerdict:
        """The verdict against the strongest baseline: the one the run logs."""
        return self.verdicts[self.strongest_baseline]


def required_baselines(model_type: str) -> tuple[str, ...]:
    """The baselines a model of `model_type` must beat to be proven.

    Every model must beat majority, the last move and logistic regression; a network must also
    beat LightGBM, the cheaper model it would be preferred over. The LightGBM model types are
    scored beside the LightGBM baseline but not judged against it (it is what they are).
    """
    if model_type in NETWORK_TYPES:
        return baselines.BASELINES
    return tuple(b for b in baselines.BASELINES if b != "lightgbm")


def judge(
    y: np.ndarray,
    probas: dict[str, np.ndarray],
    *,
    rule: VerdictRule,
    required: tuple[str, ...] | None = None,
) -> Judgement:
    """The model (`probas[MODEL]`) against every other forecaster of `probas` on labels `y`.

    Every baseline gets its verdict; "beats" needs the interval against each `required` one
    (default: all) wholly below `-rule.margin`. The strongest baseline is the required one of
    lowest mean log loss (the model's largest mean difference).
    """
    if MODEL not in probas or len(probas) < 2:
        raise ValueError(f"judging needs {MODEL!r} and at least one baseline, got {sorted(probas)}")
    verdicts = {
        name: rule.compare(y, probas[MODEL], proba)
        for name, proba in probas.items()
        if name != MODEL
    }
    judged = [n for n in verdicts if required is None or n in required] or list(verdicts)
    strongest = max(judged, key=lambda name: verdicts[name].mean)
    beats = all(verdicts[n].better(rule.margin) for n in judged)
    return Judgement(verdicts=verdicts, strongest_baseline=strongest, beats_baseline=beats)


@dataclass(frozen=True)
class Scores:
    """Metrics of the model and every baseline on the same rows, and the trading results."""

    y: np.ndarray
    predictions: dict[str, baselines.Prediction]
    metrics: dict[str, dict[str, float]]
    trading: dict[str, Backtest]
    metric: str
    rule: VerdictRule
    judgement: Judgement

    @property
    def strongest_baseline(self) -> str:
        return self.judgement.strongest_baseline

    @property
    def beats_baseline(self) -> bool:
        return self.judgement.beats_baseline

    @property
    def verdict(self) -> PairedVerdict:
        return self.judgement.verdict


def fit_baselines(
    dataset: Dataset,
    split: Split,
    scaler: FeatureScaler,
    *,
    seed: int,
    lightgbm: np.ndarray | None = None,
) -> dict[str, baselines.Prediction]:
    """The baselines fitted on the training rows, predicting the test rows.

    `lightgbm`: the LightGBM baseline's test probabilities when the caller has fitted that very
    booster already (the `lightgbm` model type and the blend's member are it), so it is not
    fitted twice.
    """
    y_train = labels(dataset, split.train)
    close = dataset.close
    # The rows `labels` gives, ties left out (`decided_rows`), so every forecaster scores them.
    train_rows = decided_rows(dataset, split.train)
    test_rows = decided_rows(dataset, split.test)
    # A last move needs close[t - horizon]; the first training rows may lack it.
    seen = train_rows >= dataset.horizon
    val_rows = decided_rows(dataset, split.val)
    # Scaled last-step feature rows from the first training row to the last test row.
    first = split.train.start
    scaled = scaler.transform(dataset.features[first : split.test.stop])
    train_at, val_at, test_at = train_rows - first, val_rows - first, test_rows - first
    return {
        "majority": baselines.majority(y_train=y_train, rows=len(test_rows)),
        "last_move": baselines.last_move(
            last_up_train=baselines.last_move_up(close, train_rows[seen], horizon=dataset.horizon),
            y_train=y_train[seen],
            last_up=baselines.last_move_up(close, test_rows, horizon=dataset.horizon),
        ),
        "logistic": baselines.logistic(
            x_train=scaled[train_at], y_train=y_train, x=scaled[test_at], seed=seed
        ),
        "lightgbm": (
            baselines.lightgbm(
                x_train=scaled[train_at],
                y_train=y_train,
                x=scaled[test_at],
                seed=seed,
                x_val=scaled[val_at],
                y_val=labels(dataset, split.val),
            )
            if lightgbm is None
            else baselines.boosted(lightgbm)
        ),
    }


def score(
    *,
    y: np.ndarray,
    model_proba: np.ndarray,
    baseline_predictions: dict[str, baselines.Prediction],
    returns: np.ndarray,
    settings: Settings,
    required: tuple[str, ...] | None = None,
) -> Scores:
    """Score the model and the baselines on the same labels, judge the model against them
    (paired; `required`: the baselines it must beat, default all), and backtest the model's
    signals."""
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
    rule = VerdictRule.from_settings(settings)
    judgement = judge(
        y, {name: p.proba for name, p in predictions.items()}, rule=rule, required=required
    )
    return Scores(
        y=np.asarray(y),
        predictions=predictions,
        metrics=metrics,
        trading=trade(model_proba=model_proba, returns=returns, settings=settings),
        metric=settings.promotion_metric,
        rule=rule,
        judgement=judgement,
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
    """Predict with `bundle` (ONNX) for the samples ending at `timestamps`, ties left out.

    A row whose close `horizon` candles later is unchanged (a tie) is no sample, as in training:
    the answer's `timestamps` are the given ones less the ties. Features are computed over the
    full candle history with the bundle's own spec, scaled with its scaler and cut into its own
    sequence length, so models of different shapes are scored on the same rows and labels.
    """
    positions = candles.index.get_indexer(timestamps)
    if (positions < 0).any():
        missing = timestamps[positions < 0]
        raise ValueError(f"{len(missing)} scored rows are not in the candles, first {missing[0]}")
    if positions.size and positions.max() + horizon >= len(candles):
        raise ValueError(f"the newest scored rows have no label yet (horizon {horizon})")
    target = make_targets(candles, horizon=horizon).to_numpy()[positions]
    keep = decided(target)
    if not keep.any():
        raise ValueError(f"none of the {len(timestamps)} scored rows is up or down (all ties)")
    positions, target, timestamps = positions[keep], target[keep], timestamps[keep]
    features = compute_features(candles, spec=bundle.spec).to_numpy(dtype=np.float64)
    length = bundle.sequence_length
    if positions.min() - length + 1 < 0:
        raise ValueError("the first scored row has too little history for a window")
    windows = np.stack([features[p - length + 1 : p + 1] for p in positions])
    if not np.isfinite(windows).all():
        raise ValueError("the scored windows reach into the feature warm-up rows")
    return WindowScore(
        timestamps=timestamps, y=target.astype(np.int8), proba=bundle.predict_proba(windows)
    )
