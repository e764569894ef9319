"""Fitting and scoring the magnitude head (`pipelines.magnitude`): what needs scikit-learn.

A training fits the head on the rows and with the scaler of the logistic baseline it ships
(`fit_head`), and judges it on the run's test window against its three baselines
(`score_splits`): for each verdict split the head, the persistence rates and the HAR regression
are fitted on that split's training rows with that split's scaler, and the probabilities of
every test row are scored together. The head beats its baselines when the paired interval of
the per-row log-loss difference (head minus baseline, `pipelines.lifecycle.intervals`) lies
wholly below 0 against each of the three.

The head's inputs (`head_inputs`): a HAR inside each window of the spec's one-candle return and
high-low range (`WINDOW_FEATURES`, over the last hour, day and the whole window:
`window_spans`), and the scaled last step of the calendar features (`LAST_STEP_FEATURES`). The
level of volatility drifts between training and test rows; the log of a window mean tracks it
where the scaled last step of the engineered features does not (docs/magnitude.md measures
both). A spec without any of `WINDOW_FEATURES` gets the older head: the scaled last step of
every feature.

The magnitude label has no ties to drop: an unchanged close is a move that cleared nothing, so
every sample row of a range is a row here (the direction's rows leave ties out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlproject import baselines
from mlproject.data import Dataset, Split, fit_scaler
from mlproject.metrics import roc_auc
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import FeatureSpec
from pipelines.lifecycle.intervals import PairedVerdict, paired_interval
from pipelines.lifecycle.scores import log_losses
from pipelines.magnitude import (
    MagnitudeError,
    MagnitudeHead,
    Persistence,
    base_rate,
    har_features,
    move_labels,
    window_har,
)

HEAD = "head"
# The window HAR's inputs: the one-candle log return (`ret_1`, or the raw set's `raw_close`)
# and the high-low range; the last step's: the hour and the weekday, on which activity depends.
WINDOW_FEATURES: tuple[str, ...] = ("ret_1", "raw_close", "hl_range")
LAST_STEP_FEATURES: tuple[str, ...] = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
DAY = 24  # the window HAR's middle span, in hourly candles
CHUNK_ROWS = 2048  # windows scored at once: a chunk of raw windows stays near 70 MB
BASELINES: tuple[str, ...] = ("base_rate", "persistence", "har")
METRIC_PREFIX = "move"
# The MLflow metrics of a run: the head's log loss and ROC AUC, each baseline's log loss, and
# 1/0 for whether the head beats all three.
METRICS: tuple[str, ...] = (
    "move_log_loss",
    "move_auc",
    *(f"move_{name}_log_loss" for name in BASELINES),
    "move_beats_baseline",
)


def window_spans(sequence_length: int) -> tuple[int, ...]:
    """The spans of the window HAR: the last candle, the last day and the whole window (those
    of them a window of `sequence_length` holds, each once)."""
    if sequence_length < 1:
        raise MagnitudeError(f"sequence_length must be at least 1, got {sequence_length!r}")
    return tuple(sorted({1, min(DAY, sequence_length), sequence_length}))


Inputs = tuple[tuple[str, ...], tuple[str, ...]]  # a head's last-step and window features


def head_inputs(spec: FeatureSpec) -> Inputs:
    """The head's last-step features and window features for `spec`."""
    window = tuple(name for name in WINDOW_FEATURES if name in spec.names)
    if not window:
        return tuple(spec.names), ()
    return tuple(name for name in LAST_STEP_FEATURES if name in spec.names), window


def fit_head(
    dataset: Dataset, rows: range, scaler: FeatureScaler, *, threshold: float, seed: int
) -> MagnitudeHead:
    """The magnitude head fitted on the windows ending on `rows` (every row with a known
    outcome, ties included), L2 logistic regression as the direction's logistic baseline
    (`mlproject.baselines.fit_logistic`)."""
    labels = move_labels(dataset.close, horizon=dataset.horizon, threshold=threshold)
    return _fit(
        dataset, np.arange(rows.start, rows.stop), labels, scaler, threshold=threshold, seed=seed
    )


def _fit(
    dataset: Dataset,
    positions: np.ndarray,
    labels: np.ndarray,
    scaler: FeatureScaler,
    *,
    threshold: float,
    seed: int,
    inputs: Inputs | None = None,
) -> MagnitudeHead:
    """The head on the windows ending on `positions` whose label (of all candles) is known,
    reading `inputs` (`head_inputs` of the spec by default)."""
    at = np.asarray(positions, dtype=np.int64)
    y = np.asarray(labels, dtype=np.float64)[at]
    known = np.isfinite(y)
    if not known.any():
        raise MagnitudeError(f"none of the {at.size} training rows has a known outcome")
    at, y = at[known], y[known]
    names = tuple(dataset.spec.names)
    last_step, window = head_inputs(dataset.spec) if inputs is None else inputs
    spans = window_spans(dataset.sequence_length) if window else ()
    last = scaler.transform(dataset.features[at])[:, [names.index(n) for n in last_step]]
    har = window_har(_windows(dataset, at, window), spans=spans)
    center = har.mean(axis=0)
    spread = har.std(axis=0)
    scale = np.where(spread > 0, spread, 1.0)
    x = np.hstack([np.asarray(last, dtype=np.float64), (har - center) / scale])
    coef, intercept = baselines.fit_logistic(x_train=x, y_train=y, seed=seed)
    return MagnitudeHead(
        names=names,
        last_step=last_step,
        window=window,
        spans=spans,
        center=center,
        scale=scale,
        coef=coef,
        intercept=intercept,
        threshold=float(threshold),
        horizon=dataset.horizon,
    )


def _windows(dataset: Dataset, positions: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """Raw windows (n, sequence_length, len(columns)) of `columns` ending on `positions`."""
    length = dataset.sequence_length
    at = np.asarray(positions, dtype=np.int64)
    if at.size and at.min() < dataset.first_row + length - 1:
        raise MagnitudeError(
            f"row {int(at.min())} ends no complete window: the first is "
            f"{dataset.first_row + length - 1}"
        )
    names = tuple(dataset.spec.names)
    matrix = (
        dataset.features
        if columns == names
        else dataset.features[:, [names.index(name) for name in columns]]
    )
    # A view: (rows - length + 1, len(columns), length), window k ending on row k + length - 1.
    view = np.lib.stride_tricks.sliding_window_view(matrix, length, axis=0)
    return view[at - length + 1].transpose(0, 2, 1)


def move_proba(
    head: MagnitudeHead, dataset: Dataset, positions: np.ndarray, scaler: FeatureScaler
) -> np.ndarray:
    """`head.proba` of the windows ending on `positions`, as a bundle serves it
    (`ModelBundle.move_proba`: the raw window and its last step scaled), in chunks."""
    at = np.asarray(positions, dtype=np.int64)
    parts = [np.empty(0)]
    for start in range(0, at.size, CHUNK_ROWS):
        chunk = at[start : start + CHUNK_ROWS]
        windows = _windows(dataset, chunk, tuple(dataset.spec.names))
        parts.append(head.proba(windows, scaler.transform(windows[:, -1, :])))
    return np.concatenate(parts)


@dataclass(frozen=True, eq=False)
class HarBaseline:
    """A logistic regression on standardised `har_features`."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, features: np.ndarray, y: np.ndarray, *, seed: int) -> HarBaseline:
        """Fitted on the rows whose features and label are all known."""
        x = np.asarray(features, dtype=np.float64)
        target = np.asarray(y, dtype=np.float64)
        keep = np.isfinite(x).all(axis=1) & np.isfinite(target)
        if keep.sum() < 2:
            raise MagnitudeError(f"the HAR baseline needs 2 rows to fit, got {int(keep.sum())}")
        mean = x[keep].mean(axis=0)
        std = x[keep].std(axis=0)
        scale = np.where(std > 0, std, 1.0)
        coef, intercept = baselines.fit_logistic(
            x_train=(x[keep] - mean) / scale, y_train=target[keep], seed=seed
        )
        return cls(mean=mean, scale=scale, coef=coef, intercept=intercept)

    def proba(self, features: np.ndarray) -> np.ndarray:
        """P(clear) per row; a row with unknown features gets the intercept's probability."""
        z = np.nan_to_num((np.asarray(features, dtype=np.float64) - self.mean) / self.scale)
        return 0.5 * (1.0 + np.tanh(0.5 * (z @ self.coef + self.intercept)))


def fold_forecasts(
    *,
    dataset: Dataset,
    labels: np.ndarray,
    scaler: FeatureScaler,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
    inputs: Inputs | None = None,
) -> dict[str, np.ndarray]:
    """P(clear) on the `test` rows from the head and each baseline, fitted on `train` rows.

    Args:
        dataset: the pair's candles and features (positions are indices into them).
        labels: the label of every row (`move_labels`), NaN where unknown.
        scaler: the split's scaler, of the head's last-step features.
        train: training positions; those with an unknown label are skipped.
        test: scored positions.
        seed: of the logistic regressions.
        inputs: the head's, when not those it ships with (`head_inputs`).

    Returns:
        `HEAD` and each of `BASELINES` mapped to (len(test),) probabilities.
    """
    train, test = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
    y = np.asarray(labels, dtype=np.float64)
    horizon = dataset.horizon
    # The labels are given (a per-row threshold among them): what the head records as its
    # threshold is read by no one here.
    head = _fit(dataset, train, y, scaler, threshold=0.0, seed=seed, inputs=inputs)
    har = har_features(dataset.close)
    return {
        HEAD: move_proba(head, dataset, test, scaler),
        "base_rate": base_rate(y, horizon=horizon)[test],
        "persistence": Persistence.fit(y, train, horizon=horizon).proba(y, test, horizon=horizon),
        "har": HarBaseline.fit(har[train], y[train], seed=seed).proba(har[test]),
    }


@dataclass(frozen=True)
class MoveScores:
    """The head and its baselines scored on the same rows: log loss and ROC AUC of each, and
    the paired interval of the head's per-row log loss minus each baseline's."""

    rows: int
    positive_rate: float
    log_loss: dict[str, float]
    auc: dict[str, float]
    verdicts: dict[str, PairedVerdict]

    @property
    def beats_baseline(self) -> bool:
        """The interval lies wholly below 0 against every baseline."""
        return all(verdict.better() for verdict in self.verdicts.values())

    @property
    def strongest_baseline(self) -> str:
        """The baseline of lowest log loss."""
        return min(self.verdicts, key=lambda name: self.log_loss[name])

    def metrics(self) -> dict[str, float]:
        """`METRICS` with their values."""
        return {
            "move_log_loss": self.log_loss[HEAD],
            "move_auc": self.auc[HEAD],
            **{f"move_{name}_log_loss": self.log_loss[name] for name in self.verdicts},
            "move_beats_baseline": float(self.beats_baseline),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "positive_rate": self.positive_rate,
            **self.metrics(),
            "beats_baseline": self.beats_baseline,
            "strongest_baseline": self.strongest_baseline,
            "log_loss": dict(self.log_loss),
            "roc_auc": dict(self.auc),
            "verdicts": {name: verdict.to_dict() for name, verdict in self.verdicts.items()},
        }


def score_forecasts(y: np.ndarray, proba: dict[str, np.ndarray]) -> MoveScores:
    """Score `proba` (`HEAD` and baselines, as `fold_forecasts` gives them) on 0/1 outcomes."""
    outcome = np.asarray(y, dtype=np.float64)
    if outcome.size == 0:
        raise MagnitudeError("no rows to score the magnitude head on")
    losses = {name: log_losses(p, outcome) for name, p in proba.items()}
    return MoveScores(
        rows=int(outcome.size),
        positive_rate=float(outcome.mean()),
        log_loss={name: float(loss.mean()) for name, loss in losses.items()},
        auc={name: roc_auc(outcome, np.asarray(p)) for name, p in proba.items()},
        verdicts={
            name: paired_interval(losses[HEAD] - losses[name]) for name in proba if name != HEAD
        },
    )


@dataclass(frozen=True)
class MagnitudeReport:
    """A run's magnitude scores with the label they speak for."""

    threshold: float
    horizon: int
    scores: MoveScores

    def metrics(self) -> dict[str, float]:
        return self.scores.metrics()

    def metadata(self) -> dict[str, Any]:
        """What the bundle's metadata says under "magnitude"."""
        return {
            "label": "|close[t + horizon] / close[t] - 1| > threshold",
            "threshold": self.threshold,
            "horizon": self.horizon,
            "scored_on": "the run's test window, each verdict split's head and baselines fitted "
            "on its training rows",
            **self.scores.to_dict(),
        }


def score_labels(
    dataset: Dataset,
    splits: list[Split],
    labels: np.ndarray,
    *,
    seed: int,
    inputs: Inputs | None = None,
) -> MoveScores:
    """The head and its baselines on the test rows (known labels) of every split together,
    each split's fitted on its own training rows with its own scaler (`fit_scaler`, the one
    the held-out model of that split learnt with).

    Args:
        labels: one label per candle of `dataset` (`move_labels`), NaN where unknown.
        inputs: the head's, when not those it ships with (`head_inputs`).
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != dataset.close.shape:
        raise MagnitudeError(f"{y.size} labels for {dataset.close.size} candles")
    parts: list[dict[str, np.ndarray]] = []
    outcomes = []
    for split in splits:
        train = np.arange(split.train.start, split.train.stop)
        test = np.arange(split.test.start, split.test.stop)
        test = test[np.isfinite(y[test])]
        parts.append(
            fold_forecasts(
                dataset=dataset,
                labels=y,
                scaler=fit_scaler(dataset, split),
                train=train,
                test=test,
                seed=seed,
                inputs=inputs,
            )
        )
        outcomes.append(y[test])
    proba = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    return score_forecasts(np.concatenate(outcomes), proba)


def score_splits(
    dataset: Dataset, splits: list[Split], *, threshold: float, seed: int
) -> MagnitudeReport:
    """A run's magnitude report: `score_labels` on the labels of `threshold`."""
    labels = move_labels(dataset.close, horizon=dataset.horizon, threshold=threshold)
    scores = score_labels(dataset, splits, labels, seed=seed)
    return MagnitudeReport(threshold=float(threshold), horizon=dataset.horizon, scores=scores)
