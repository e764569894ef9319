"""The baselines every model is judged against, fitted on the training rows only.

- `majority`: the training rows' rate of "up" as a constant probability; its hard prediction is
  the majority class.
- `persistence`: the next move repeats the last one (close[t] vs close[t - horizon]). Its
  probability is the training rows' rate of repeats q (at least 0.5) in the last move's
  direction, so that log loss and Brier score are defined.
- `logistic`: a logistic regression on the last step's (scaled) features of each window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASELINES: tuple[str, ...] = ("majority", "persistence", "logistic")


@dataclass(frozen=True)
class Prediction:
    """Probabilities of "up" and the hard 0/1 predictions made from them."""

    proba: np.ndarray
    pred: np.ndarray


def majority(*, y_train: np.ndarray, rows: int) -> Prediction:
    """Constant probability = the training rate of "up" (ties predict "up")."""
    rate = float(np.mean(y_train))
    proba = np.full(rows, rate)
    return Prediction(proba=proba, pred=np.full(rows, int(rate >= 0.5), dtype=np.int8))


def persistence(
    *, last_up_train: np.ndarray, y_train: np.ndarray, last_up: np.ndarray
) -> Prediction:
    """Predict the last move's direction again.

    Args:
        last_up_train: 1 where the training row's last move was up.
        y_train: the training labels.
        last_up: 1 where the scored row's last move was up.
    """
    repeat = float(np.mean(np.asarray(last_up_train) == np.asarray(y_train)))
    q = min(max(repeat, 0.5), 1.0 - 1e-6)
    up = np.asarray(last_up).astype(np.int8)
    proba = np.where(up == 1, q, 1.0 - q)
    return Prediction(proba=proba, pred=up)


def logistic(*, x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray, seed: int) -> Prediction:
    """L2-regularised logistic regression (C=1) on 2-D feature rows."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y_train).astype(np.int8)
    if np.unique(y).size < 2:
        # One class only: the regression is undefined and the majority rule is its limit.
        return majority(y_train=y, rows=len(x))
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    model.fit(x_train, y)
    proba = model.predict_proba(x)[:, 1]
    return Prediction(proba=proba, pred=(proba >= 0.5).astype(np.int8))


def last_move_up(close: np.ndarray, rows: np.ndarray, *, horizon: int) -> np.ndarray:
    """1 where close[t] > close[t - horizon] for each t in `rows` (positions in `close`)."""
    rows = np.asarray(rows)
    if rows.size and rows.min() < horizon:
        raise ValueError(f"rows must start at or after position {horizon} to see a last move")
    return (close[rows] > close[rows - horizon]).astype(np.int8)
