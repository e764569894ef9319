"""From candles to model inputs: the feature matrix, time-ordered splits with purge gaps, windows.

Positions are row numbers in the pair's full candle frame. A sample is named by the row `t` its
window ends on: the window covers rows t-L+1 .. t and the label compares close[t+horizon] with
close[t]. Splits are contiguous ranges of sample rows, oldest first: train, then validation
(early stopping), then test. Between two parts `sequence_length + horizon` sample rows are
dropped (the purge gap), so no window of a later part reads a row that an earlier part's windows
or labels touched.

A tie (close[t+horizon] == close[t]) is no sample: `decided_rows` leaves it out of a part's range,
and `windows`, `labels`, `next_returns` and `sample_times` all materialise those same rows, so
fitting, baselines, scores and trading see one set. The windows of other rows still read tie
candles as inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from pipelines.features.compute import compute_features
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import FeatureSpec
from pipelines.features.windows import make_targets, make_windows
from pipelines.lifecycle.scores import decided

MIN_PART_ROWS = 8


class NotEnoughDataError(ValueError):
    """Too few candles for the requested split; the message gives the counts."""


@dataclass(frozen=True)
class Dataset:
    """A pair's candles with their features, and the first row training may use."""

    candles: pd.DataFrame
    features: np.ndarray
    spec: FeatureSpec
    sequence_length: int
    horizon: int
    first_row: int

    @property
    def close(self) -> np.ndarray:
        return self.candles["close"].to_numpy(dtype=np.float64)

    @cached_property
    def targets(self) -> np.ndarray:
        """Per row: 1 up, 0 down, NaN for a tie or no outcome yet (`make_targets`)."""
        return make_targets(self.candles, horizon=self.horizon).to_numpy()

    @property
    def samples(self) -> range:
        """Rows that end a complete window and have an outcome (ties included: see
        `decided_rows`)."""
        return range(self.first_row + self.sequence_length - 1, len(self.candles) - self.horizon)

    @property
    def gap(self) -> int:
        return self.sequence_length + self.horizon


@dataclass(frozen=True)
class Split:
    """Sample rows of each part, ties included (`decided_rows` drops them); `test` is the
    newest."""

    train: range
    val: range
    test: range


def build_dataset(
    candles: pd.DataFrame,
    *,
    spec: FeatureSpec,
    sequence_length: int,
    horizon: int,
    max_rows: int = 0,
) -> Dataset:
    """Compute features over the full history and choose the rows training may use.

    Args:
        candles: the pair's candles, oldest first.
        spec: the feature set.
        sequence_length: candles per window.
        horizon: candles ahead the label looks.
        max_rows: use only the newest `max_rows` candles (0 = all). Their features are still
            computed from the full history, so the warm-up rows are not lost.
    """
    if max_rows < 0:
        raise ValueError(f"max_rows must be 0 (all) or positive, got {max_rows}")
    features = compute_features(candles, spec=spec).to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    first_valid = int(bad[-1]) + 1 if bad.size else 0
    first_row = max(first_valid, len(candles) - max_rows) if max_rows else first_valid
    return Dataset(
        candles=candles,
        features=features,
        spec=spec,
        sequence_length=sequence_length,
        horizon=horizon,
        first_row=first_row,
    )


def time_split(dataset: Dataset, *, val_fraction: float, test_fraction: float) -> Split:
    """Train, validation and test parts over all samples, the test part newest."""
    samples = dataset.samples
    usable = len(samples) - 2 * dataset.gap
    n_test = round(len(samples) * test_fraction)
    n_val = round(len(samples) * val_fraction)
    test = range(samples.stop - n_test, samples.stop)
    val = range(test.start - dataset.gap - n_val, test.start - dataset.gap)
    train = range(samples.start, max(samples.start, val.start - dataset.gap))
    _check(dataset, Split(train=train, val=val, test=test), usable=usable)
    return Split(train=train, val=val, test=test)


def walk_forward_splits(
    dataset: Dataset, *, folds: int, test_size: int, val_fraction: float
) -> list[Split]:
    """`folds` consecutive test windows of `test_size` samples ending at the newest sample.

    Each fold trains on everything before its test window (an expanding window), less the
    purge gaps and the validation part.
    """
    if folds < 1 or test_size < 1:
        raise ValueError(f"folds and test_size must be positive, got {folds} and {test_size}")
    samples = dataset.samples
    splits = []
    for fold in range(folds):
        stop = samples.stop - (folds - 1 - fold) * test_size
        test = range(stop - test_size, stop)
        before = range(samples.start, max(samples.start, test.start - dataset.gap))
        n_val = round(max(0, len(before) - dataset.gap) * val_fraction)
        val = range(before.stop - n_val, before.stop)
        train = range(samples.start, max(samples.start, val.start - dataset.gap))
        split = Split(train=train, val=val, test=test)
        _check(dataset, split, usable=len(samples) - 2 * dataset.gap)
        splits.append(split)
    return splits


def fit_scaler(dataset: Dataset, split: Split) -> FeatureScaler:
    """Standardisation fitted on the rows the training windows cover, and no later row."""
    return fit_scaler_on(dataset, split.train)


def fit_scaler_on(dataset: Dataset, rows: range) -> FeatureScaler:
    """Standardisation fitted on the rows the windows ending on `rows` cover, and no later row."""
    covered = dataset.features[dataset.first_row : rows.stop]
    return FeatureScaler.fit(covered, names=dataset.spec.names)


def decided_rows(dataset: Dataset, rows: range) -> np.ndarray:
    """The positions of `rows` whose outcome is up or down, ascending: ties left out."""
    positions = np.arange(rows.start, rows.stop)
    return positions[decided(dataset.targets[rows.start : rows.stop])]


def windows(dataset: Dataset, scaler: FeatureScaler, rows: range) -> np.ndarray:
    """Scaled windows (samples, L, F), float32, ending on each row of `decided_rows(rows)`."""
    length = dataset.sequence_length
    start = rows.start - length + 1
    if start < dataset.first_row:
        raise ValueError(f"the window of row {rows.start} starts before the first usable row")
    block = scaler.transform(dataset.features[start : rows.stop])
    every = make_windows(block, sequence_length=length)
    return np.ascontiguousarray(every[decided_rows(dataset, rows) - rows.start])


def labels(dataset: Dataset, rows: range) -> np.ndarray:
    """0/1 labels (float32) of `decided_rows(rows)`."""
    return dataset.targets[decided_rows(dataset, rows)].astype(np.float32)


def next_returns(dataset: Dataset, rows: range) -> np.ndarray:
    """Return of the candle after each of `decided_rows(rows)`, close[t+1] / close[t] - 1."""
    close = dataset.close
    at = decided_rows(dataset, rows)
    return close[at + 1] / close[at] - 1.0


def sample_times(dataset: Dataset, rows: range) -> pd.DatetimeIndex:
    """The candle times of `decided_rows(rows)`: the index of their windows, labels and scores."""
    return pd.DatetimeIndex(dataset.candles.index[decided_rows(dataset, rows)])


def _check(dataset: Dataset, split: Split, *, usable: int) -> None:
    parts = {"train": split.train, "validation": split.val, "test": split.test}
    first = dataset.samples.start  # a part reaching before the first sample holds no more
    sizes = {
        name: len(decided_rows(dataset, range(max(part.start, first), max(part.stop, first))))
        for name, part in parts.items()
    }
    small = {name: size for name, size in sizes.items() if size < MIN_PART_ROWS}
    if split.test.start < dataset.samples.start or small:
        available = len(dataset.candles) - dataset.first_row
        raise NotEnoughDataError(
            f"not enough candles: {available} usable candles give "
            + ", ".join(f"{name} {size}" for name, size in sizes.items())
            + f" samples (ties dropped) after two purge gaps of {dataset.gap} (sequence_length "
            f"{dataset.sequence_length} + horizon {dataset.horizon}); each part needs at least "
            f"{MIN_PART_ROWS}: use more candles (max_rows), a shorter sequence_length or a "
            f"smaller test window ({max(usable, 0)} samples usable)"
        )
