"""Splits are time-ordered with purge gaps, and the scaler sees the training rows only."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mlproject.data import (
    Dataset,
    NotEnoughDataError,
    Split,
    build_dataset,
    fit_scaler,
    labels,
    time_split,
    walk_forward_splits,
    windows,
)
from pipelines.features.spec import default_spec

LENGTH, HORIZON = 20, 3


@pytest.fixture(scope="module")
def dataset(btc_candles: pd.DataFrame) -> Dataset:
    return build_dataset(
        btc_candles, spec=default_spec(), sequence_length=LENGTH, horizon=HORIZON, max_rows=3000
    )


def _assert_purged(split: Split, length: int, horizon: int) -> None:
    parts = [split.train, split.val, split.test]
    for earlier, later in itertools.pairwise(parts):
        last = earlier.stop - 1
        # sequence_length + horizon sample rows are dropped between two parts ...
        assert later.start - last - 1 == length + horizon
        # ... so the first window of the later part starts after the earlier part's last label.
        assert later.start - length + 1 > last + horizon


def test_first_row_skips_the_feature_warm_up(btc_candles: pd.DataFrame) -> None:
    ds = build_dataset(btc_candles, spec=default_spec(), sequence_length=LENGTH, horizon=HORIZON)
    assert np.isfinite(ds.features[ds.first_row :]).all()
    assert not np.isfinite(ds.features[ds.first_row - 1]).all()


def test_max_rows_keeps_the_newest_candles(dataset: Dataset) -> None:
    assert len(dataset.candles) - dataset.first_row == 3000
    assert dataset.samples.stop == len(dataset.candles) - HORIZON


def test_time_split_is_ordered_purged_and_tests_the_newest_rows(dataset: Dataset) -> None:
    split = time_split(dataset, val_fraction=0.15, test_fraction=0.15)

    assert split.train.start == dataset.samples.start
    assert split.test.stop == dataset.samples.stop
    _assert_purged(split, LENGTH, HORIZON)
    assert len(split.test) == round(len(dataset.samples) * 0.15)


def test_walk_forward_folds_expand_and_end_at_the_newest_sample(dataset: Dataset) -> None:
    splits = walk_forward_splits(dataset, folds=3, test_size=200, val_fraction=0.15)

    assert splits[-1].test.stop == dataset.samples.stop
    for before, after in itertools.pairwise(splits):
        assert after.test.start == before.test.stop
        assert after.train.start == before.train.start
        assert after.train.stop > before.train.stop
    for split in splits:
        assert len(split.test) == 200
        _assert_purged(split, LENGTH, HORIZON)


def test_scaler_is_fitted_on_training_rows_only(dataset: Dataset) -> None:
    split = time_split(dataset, val_fraction=0.15, test_fraction=0.15)
    scaler = fit_scaler(dataset, split)

    train_rows = dataset.features[dataset.first_row : split.train.stop]
    np.testing.assert_allclose(scaler.mean, train_rows.mean(axis=0))
    assert scaler.rows == split.train.stop - dataset.first_row
    # Later rows changed beyond recognition leave the scaler as it was.
    poisoned = np.array(dataset.features, copy=True)
    poisoned[split.train.stop :] = 1e9
    again = fit_scaler(replace(dataset, features=poisoned), split)
    np.testing.assert_array_equal(again.mean, scaler.mean)
    np.testing.assert_array_equal(again.scale, scaler.scale)


def test_windows_end_on_their_row_and_labels_look_ahead(dataset: Dataset) -> None:
    split = time_split(dataset, val_fraction=0.15, test_fraction=0.15)
    scaler = fit_scaler(dataset, split)

    x = windows(dataset, scaler, split.test)
    y = labels(dataset, split.test)

    assert x.shape == (len(split.test), LENGTH, len(dataset.spec.names))
    np.testing.assert_allclose(x[5, -1], scaler.transform(dataset.features[split.test.start + 5]))
    close = dataset.close
    t = split.test.start + 5
    assert y[5] == float(close[t + HORIZON] > close[t])


def test_too_few_candles_give_an_error_with_the_counts(btc_candles: pd.DataFrame) -> None:
    small = build_dataset(
        btc_candles, spec=default_spec(), sequence_length=60, horizon=1, max_rows=150
    )
    with pytest.raises(NotEnoughDataError, match=r"not enough candles: 150 usable candles give"):
        time_split(small, val_fraction=0.15, test_fraction=0.15)
