"""The baselines every model is judged against, fitted on the training rows only.

- `majority`: the training rows' rate of "up" as a constant probability; its hard prediction is
  the majority class.
- `last_move`: the last move (close[t] vs close[t - horizon]) with its fitted direction. Its
  probability of "up" after an up move is the training rows' rate of "up" after an up move, and
  likewise after a down move: where the training rows reverse, it predicts reversal; where they
  continue, continuation. No floor at 0.5 (hourly crypto moves reverse slightly more often than
  they repeat, so a floor would leave it at ln 2 and make it a straw man).
- `logistic`: a logistic regression on the last step's (scaled) features of each window.
- `lightgbm`: the regularised, early-stopped LightGBM of the `lightgbm` model type
  (`mlproject.tabular.fit_booster`) on the last step's scaled features: a network must beat
  it to be preferred over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASELINES: tuple[str, ...] = ("majority", "last_move", "logistic", "lightgbm")

# Probabilities of the fitted rules stay this far from 0 and 1, so a rule learnt from training
# rows that all went one way is not infinitely sure of it.
PROBA_CLIP = 1e-6


@dataclass(frozen=True)
class Prediction:
    """Probabilities of "up" and the hard 0/1 predictions made from them."""

    proba: np.ndarray
    pred: np.ndarray


def _from_proba(proba: np.ndarray) -> Prediction:
    p = np.asarray(proba, dtype=np.float64)
    return Prediction(proba=p, pred=(p >= 0.5).astype(np.int8))


def majority(*, y_train: np.ndarray, rows: int) -> Prediction:
    """Constant probability = the training rate of "up" (ties predict "up")."""
    rate = float(np.mean(y_train))
    proba = np.full(rows, rate)
    return Prediction(proba=proba, pred=np.full(rows, int(rate >= 0.5), dtype=np.int8))


def last_move(*, last_up_train: np.ndarray, y_train: np.ndarray, last_up: np.ndarray) -> Prediction:
    """P(up | direction of the last move), both rates counted on the training rows.

    A direction the training rows never saw falls back to their overall rate of "up".

    Args:
        last_up_train: 1 where the training row's last move was up.
        y_train: the training labels.
        last_up: 1 where the scored row's last move was up.
    """
    seen = np.asarray(last_up_train).astype(np.int8)
    y = np.asarray(y_train, dtype=np.float64)
    if seen.shape != y.shape:
        raise ValueError(f"{seen.size} training last moves for {y.size} training labels")
    if y.size == 0:
        raise ValueError("the last-move baseline needs at least one training row")
    overall = float(y.mean())
    after_up = float(y[seen == 1].mean()) if np.any(seen == 1) else overall
    after_down = float(y[seen == 0].mean()) if np.any(seen == 0) else overall
    up = np.asarray(last_up).astype(np.int8)
    proba = np.clip(np.where(up == 1, after_up, after_down), PROBA_CLIP, 1.0 - PROBA_CLIP)
    return _from_proba(proba)


def fit_logistic(
    *, x_train: np.ndarray, y_train: np.ndarray, seed: int
) -> tuple[np.ndarray, float]:
    """Coefficients and intercept of the L2-regularised logistic regression (C=1) on 2-D
    feature rows. One class only: zero coefficients and the logit of the training rate (the
    regression is undefined there and the majority rule is its limit).

    Newton's method (scikit-learn's `newton-cholesky`): the features are correlated (returns
    over overlapping spans, moving averages), which leaves L-BFGS short of the optimum at its
    default tolerance (on BTC's 23,647 training rows it stopped after 151 iterations, 5.4 s,
    with coefficients up to 0.5 and probabilities up to 0.16 from the optimum); Newton reaches
    the optimum of the same objective in 2-3 iterations, 0.3 s."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y_train).astype(np.int8)
    if np.unique(y).size < 2:
        rate = float(np.clip(np.mean(y), PROBA_CLIP, 1.0 - PROBA_CLIP))
        return np.zeros(np.shape(x_train)[1]), float(np.log(rate / (1.0 - rate)))
    model = LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=200, random_state=seed)
    model.fit(x_train, y)
    return np.asarray(model.coef_[0], dtype=np.float64), float(model.intercept_[0])


def logistic(*, x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray, seed: int) -> Prediction:
    """L2-regularised logistic regression (C=1) on 2-D feature rows (`fit_logistic`)."""
    y = np.asarray(y_train).astype(np.int8)
    if np.unique(y).size < 2:
        return majority(y_train=y, rows=len(x))
    coef, intercept = fit_logistic(x_train=x_train, y_train=y, seed=seed)
    logit = np.asarray(x, dtype=np.float64) @ coef + intercept
    return _from_proba(0.5 * (1.0 + np.tanh(0.5 * logit)))


def lightgbm(
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x: np.ndarray,
    seed: int,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> Prediction:
    """The regularised LightGBM (`mlproject.tabular.fit_booster`) on 2-D feature rows,
    early-stopped on (x_val, y_val) when given."""
    from mlproject.tabular import MAX_ROUNDS, fit_booster

    y = np.asarray(y_train).astype(np.int8)
    if np.unique(y).size < 2:
        return majority(y_train=y, rows=len(x))
    early = x_val is not None and y_val is not None and np.unique(y_val).size == 2
    booster, _ = fit_booster(
        x_train,
        y,
        seed=seed,
        x_val=x_val if early else None,
        y_val=y_val if early else None,
        rounds=None if early else MAX_ROUNDS // 4,
    )
    proba = np.asarray(booster.predict(np.asarray(x, dtype=np.float64)), dtype=np.float64)
    return _from_proba(np.clip(proba, PROBA_CLIP, 1.0 - PROBA_CLIP))


def boosted(proba: np.ndarray) -> Prediction:
    """The LightGBM baseline's prediction from its probabilities (clipped as `lightgbm` does)."""
    return _from_proba(np.clip(np.asarray(proba, dtype=np.float64), PROBA_CLIP, 1.0 - PROBA_CLIP))


def last_move_up(close: np.ndarray, rows: np.ndarray, *, horizon: int) -> np.ndarray:
    """1 where close[t] > close[t - horizon] for each t in `rows` (positions in `close`)."""
    rows = np.asarray(rows)
    if rows.size and rows.min() < horizon:
        raise ValueError(f"rows must start at or after position {horizon} to see a last move")
    return (close[rows] > close[rows - horizon]).astype(np.int8)
