"""The baselines on hand-made inputs with known answers, and fitted on real candles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mlproject import baselines
from mlproject.data import build_dataset, fit_scaler, labels, time_split
from mlproject.scoring import fit_baselines
from pipelines.features.spec import default_spec
from pipelines.lifecycle.scores import log_loss


def test_majority_predicts_the_training_rate() -> None:
    result = baselines.majority(y_train=np.array([1, 1, 0, 1]), rows=3)
    assert result.proba.tolist() == [0.75, 0.75, 0.75]
    assert result.pred.tolist() == [1, 1, 1]


def test_last_move_predicts_reversal_where_the_training_rows_reverse() -> None:
    # Every training move but one reversed the previous one: 3 of 4 after an up move went
    # down, 3 of 4 after a down move went up.
    result = baselines.last_move(
        last_up_train=np.array([1, 1, 1, 1, 0, 0, 0, 0]),
        y_train=np.array([0, 0, 0, 1, 1, 1, 1, 0]),
        last_up=np.array([1, 0, 0]),
    )
    assert result.pred.tolist() == [0, 1, 1]
    # No floor at 0.5: the probability of the favoured reversal is the training rate.
    assert result.proba == pytest.approx([0.25, 0.75, 0.75])


def test_last_move_predicts_continuation_where_the_training_rows_continue() -> None:
    result = baselines.last_move(
        last_up_train=np.array([1, 1, 1, 1, 0, 0]),
        y_train=np.array([1, 1, 1, 0, 0, 0]),
        last_up=np.array([1, 0]),
    )
    assert result.pred.tolist() == [1, 0]
    assert result.proba[0] == pytest.approx(0.75)
    # All training down moves continued: certain, but clipped short of 0.
    assert result.proba[1] == pytest.approx(baselines.PROBA_CLIP)
    assert result.proba[1] > 0


def test_last_move_unseen_in_training_falls_back_to_the_overall_rate() -> None:
    result = baselines.last_move(
        last_up_train=np.array([1, 1, 1, 1]),
        y_train=np.array([1, 0, 0, 0]),
        last_up=np.array([0, 1]),
    )
    assert result.proba == pytest.approx([0.25, 0.25])


def test_last_move_up_compares_with_horizon_candles_before() -> None:
    close = np.array([1.0, 2.0, 1.0, 1.0, 3.0])
    assert baselines.last_move_up(close, np.array([1, 2, 3, 4]), horizon=1).tolist() == [1, 0, 0, 1]
    assert baselines.last_move_up(close, np.array([2, 4]), horizon=2).tolist() == [0, 1]
    with pytest.raises(ValueError, match="at or after position 2"):
        baselines.last_move_up(close, np.array([1]), horizon=2)


def test_logistic_regression_separates_separable_rows() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int8)

    result = baselines.logistic(x_train=x[:150], y_train=y[:150], x=x[150:], seed=0)

    assert np.mean(result.pred == y[150:]) > 0.9
    assert ((result.proba > 0) & (result.proba < 1)).all()


def test_logistic_regression_with_one_class_falls_back_to_majority() -> None:
    result = baselines.logistic(
        x_train=np.zeros((5, 2)), y_train=np.ones(5), x=np.zeros((2, 2)), seed=0
    )
    assert result.proba.tolist() == [1.0, 1.0]


def _learnable(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6))
    # A non-linear rule with label noise: learnable by trees, not by a constant.
    signal = np.where(x[:, 0] > 0, x[:, 1], -x[:, 2])
    y = (signal + 0.5 * rng.normal(size=rows) > 0).astype(np.int8)
    return x, y


def test_lightgbm_learns_a_learnable_rule_that_majority_cannot() -> None:
    x, y = _learnable(3000, seed=0)

    boosted = baselines.lightgbm(x_train=x[:2000], y_train=y[:2000], x=x[2000:], seed=0)
    constant = baselines.majority(y_train=y[:2000], rows=1000)

    test = y[2000:]
    assert log_loss(boosted.proba, test) < log_loss(constant.proba, test) - 0.1
    assert np.mean(boosted.pred == test) > 0.75
    assert ((boosted.proba > 0) & (boosted.proba < 1)).all()


def test_lightgbm_is_deterministic_for_a_seed() -> None:
    x, y = _learnable(1500, seed=1)

    first = baselines.lightgbm(x_train=x[:1000], y_train=y[:1000], x=x[1000:], seed=7)
    again = baselines.lightgbm(x_train=x[:1000], y_train=y[:1000], x=x[1000:], seed=7)

    np.testing.assert_array_equal(first.proba, again.proba)


def test_lightgbm_on_shuffled_labels_predicts_no_better_than_majority() -> None:
    # Labels shuffled against the features: nothing to learn, so a model that fits the
    # training rows only cannot score on the held-out rows.
    x, y = _learnable(3000, seed=2)
    shuffled = np.random.default_rng(3).permutation(y)

    boosted = baselines.lightgbm(x_train=x[:2000], y_train=shuffled[:2000], x=x[2000:], seed=0)
    constant = baselines.majority(y_train=shuffled[:2000], rows=1000)

    test = shuffled[2000:]
    assert log_loss(boosted.proba, test) > log_loss(constant.proba, test) - 0.005


def test_fitted_baselines_never_see_the_test_labels(btc_candles: pd.DataFrame) -> None:
    dataset = build_dataset(
        btc_candles, spec=default_spec(), sequence_length=12, horizon=1, max_rows=1500
    )
    split = time_split(dataset, val_fraction=0.15, test_fraction=0.2)
    scaler = fit_scaler(dataset, split)
    # Same features, but every close after the last validation label is scrambled, so the test
    # labels change while the training and validation rows (LightGBM stops early on the
    # validation rows) and all features stay as they were.
    close = btc_candles["close"].to_numpy().copy()
    after = split.val.stop + dataset.horizon
    rng = np.random.default_rng(0)
    close[after:] = close[after:] * np.exp(rng.normal(scale=0.05, size=close.size - after))
    scrambled = replace(dataset, candles=btc_candles.assign(close=close))
    assert not np.array_equal(labels(dataset, split.test), labels(scrambled, split.test))
    np.testing.assert_array_equal(labels(dataset, split.train), labels(scrambled, split.train))
    np.testing.assert_array_equal(labels(dataset, split.val), labels(scrambled, split.val))

    original = fit_baselines(dataset, split, scaler, seed=0)
    changed = fit_baselines(scrambled, split, scaler, seed=0)

    assert list(original) == list(baselines.BASELINES)
    for name in ("majority", "logistic", "lightgbm"):
        np.testing.assert_array_equal(original[name].proba, changed[name].proba, err_msg=name)
    for name, prediction in original.items():
        assert prediction.proba.shape == (len(split.test),), name
