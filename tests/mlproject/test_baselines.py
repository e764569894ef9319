"""The baselines on hand-made inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from mlproject import baselines


def test_majority_predicts_the_training_rate() -> None:
    result = baselines.majority(y_train=np.array([1, 1, 0, 1]), rows=3)
    assert result.proba.tolist() == [0.75, 0.75, 0.75]
    assert result.pred.tolist() == [1, 1, 1]


def test_persistence_repeats_the_last_move_with_the_training_repeat_rate() -> None:
    # Three of four training moves repeated the previous one.
    result = baselines.persistence(
        last_up_train=np.array([1, 0, 1, 0]),
        y_train=np.array([1, 0, 0, 0]),
        last_up=np.array([1, 0, 0]),
    )
    assert result.pred.tolist() == [1, 0, 0]
    assert result.proba == pytest.approx([0.75, 0.25, 0.25])


def test_persistence_probability_never_favours_reversal() -> None:
    result = baselines.persistence(
        last_up_train=np.array([1, 0, 1, 0]),
        y_train=np.array([0, 1, 0, 1]),
        last_up=np.array([1, 0]),
    )
    assert result.pred.tolist() == [1, 0]
    assert result.proba.tolist() == [0.5, 0.5]


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
