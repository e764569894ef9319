"""Splits are time-ordered with purge gaps, the scaler sees the training rows only, and a tie (an
unchanged close) is no sample: every consumer of a part sees the same up-or-down rows."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlproject.data import (
    Dataset,
    NotEnoughDataError,
    Split,
    build_dataset,
    decided_rows,
    fit_scaler,
    labels,
    next_returns,
    sample_times,
    time_split,
    walk_forward_splits,
    windows,
)
from mlproject.scoring import fit_baselines, score_bundle
from pipelines.candles.store import CandleStore
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.lifecycle.scores import log_loss
from pipelines.modelbundle import ModelBundle
from tests.conftest import BUNDLED
from tests.pipelines.test_modelbundle import _mean_sigmoid_onnx

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
    rows = decided_rows(dataset, split.test)

    x = windows(dataset, scaler, split.test)
    y = labels(dataset, split.test)

    assert x.shape == (len(rows), LENGTH, len(dataset.spec.names))
    np.testing.assert_allclose(x[5, -1], scaler.transform(dataset.features[rows[5]]))
    close = dataset.close
    t = rows[5]
    assert y[5] == float(close[t + HORIZON] > close[t])


@pytest.fixture(scope="module")
def xmr_candles() -> pd.DataFrame:
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED.parent / "none").load("XMR")


@pytest.fixture(scope="module")
def xmr(xmr_candles: pd.DataFrame) -> Dataset:
    # Horizon 1 on XMR's hours: about 4 % of them close unchanged.
    return build_dataset(
        xmr_candles, spec=default_spec(), sequence_length=LENGTH, horizon=1, max_rows=1500
    )


def _ties(dataset: Dataset, part: range) -> np.ndarray:
    at = np.arange(part.start, part.stop)
    close = dataset.close
    return at[close[at + dataset.horizon] == close[at]]


def test_tie_rows_are_no_samples_but_their_candles_still_feed_windows(xmr: Dataset) -> None:
    split = time_split(xmr, val_fraction=0.15, test_fraction=0.15)
    scaler = fit_scaler(xmr, split)
    close, features = xmr.close, xmr.features

    for part in (split.train, split.val, split.test):
        ties = _ties(xmr, part)
        rows = decided_rows(xmr, part)
        assert ties.size > 0  # real unchanged closes in every part
        assert set(rows) == set(part) - set(ties)
        y = labels(xmr, part)
        assert len(y) == len(rows)
        np.testing.assert_array_equal(y, (close[rows + 1] > close[rows]).astype(np.float32))
        assert (close[rows + 1] != close[rows]).all()
    rows = decided_rows(xmr, split.test)
    x = windows(xmr, scaler, split.test)
    assert len(x) == len(rows)
    np.testing.assert_allclose(x[:, -1], scaler.transform(features[rows]), rtol=1e-6)
    # A window ending just after a tie row still reads that candle as its second-to-last step.
    after = np.flatnonzero(np.isin(rows - 1, _ties(xmr, split.test)))[0]
    np.testing.assert_allclose(x[after, -2], scaler.transform(features[rows[after] - 1]), rtol=1e-6)
    np.testing.assert_allclose(next_returns(xmr, split.test), close[rows + 1] / close[rows] - 1)
    assert sample_times(xmr, split.test).equals(pd.DatetimeIndex(xmr.candles.index[rows]))


def test_an_always_down_forecaster_no_longer_gains_from_ties(xmr_candles: pd.DataFrame) -> None:
    whole = build_dataset(xmr_candles, spec=default_spec(), sequence_length=LENGTH, horizon=1)
    y = labels(whole, whole.samples)
    at = np.arange(whole.samples.start, whole.samples.stop)
    close = whole.close
    ties_as_down = (close[at + 1] > close[at]).astype(np.float64)  # the old labels

    def leans_down(n: int) -> np.ndarray:
        return np.full(n, 0.49)

    def coin(n: int) -> np.ndarray:
        return np.full(n, 0.5)

    # With ties counted as "down", saying "down" looked right more than half the time ...
    assert np.mean(ties_as_down == 0) > 0.5
    old = len(at)
    assert log_loss(leans_down(old), ties_as_down) < log_loss(coin(old), ties_as_down)
    # ... on the up-or-down rows it is not.
    assert len(y) < len(at)
    assert np.mean(y == 0) < 0.5
    assert log_loss(leans_down(len(y)), y) > log_loss(coin(len(y)), y)


def test_baselines_and_the_gates_bundle_scores_see_the_models_rows(
    xmr: Dataset, xmr_candles: pd.DataFrame, tmp_path: Path
) -> None:
    split = time_split(xmr, val_fraction=0.15, test_fraction=0.15)
    scaler = fit_scaler(xmr, split)
    y_test = labels(xmr, split.test)

    predictions = fit_baselines(xmr, split, scaler, seed=0)

    assert {len(p.proba) for p in predictions.values()} == {len(y_test)}
    # The majority baseline's rate is the training labels' rate of "up", ties left out.
    assert predictions["majority"].proba[0] == pytest.approx(labels(xmr, split.train).mean())
    # The gate scores a bundle on its test window's candles: it keeps the same rows and labels.
    spec = default_spec()
    bundle = ModelBundle(
        onnx_path=_mean_sigmoid_onnx(tmp_path / "m.onnx", len(spec.names)),
        scaler=FeatureScaler.fit(xmr.features[xmr.first_row :], names=spec.names),
        spec=spec,
        metadata={"pair": "XMR", "model_type": "lstm", "sequence_length": 5, "horizon": 1},
    )
    window = pd.DatetimeIndex(xmr.candles.index[split.test.start : split.test.stop])
    scored = score_bundle(bundle, candles=xmr_candles, timestamps=window, horizon=1)
    assert scored.timestamps.equals(sample_times(xmr, split.test))
    np.testing.assert_array_equal(scored.y, y_test)
    with pytest.raises(ValueError, match=r"no label yet \(horizon 1\)"):
        score_bundle(
            bundle,
            candles=xmr_candles,
            timestamps=pd.DatetimeIndex(xmr_candles.index[-3:]),
            horizon=1,
        )


def test_too_few_candles_give_an_error_with_the_counts(btc_candles: pd.DataFrame) -> None:
    small = build_dataset(
        btc_candles, spec=default_spec(), sequence_length=60, horizon=1, max_rows=150
    )
    with pytest.raises(NotEnoughDataError, match=r"not enough candles: 150 usable candles give"):
        time_split(small, val_fraction=0.15, test_fraction=0.15)


def test_folds_reaching_before_the_first_sample_are_refused_as_too_few_candles(
    dataset: Dataset,
) -> None:
    samples = len(dataset.samples)

    with pytest.raises(NotEnoughDataError, match="not enough candles"):
        walk_forward_splits(dataset, folds=3, test_size=samples // 2, val_fraction=0.15)
