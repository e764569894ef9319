"""The magnitude forecast: will the move over the horizon clear a threshold, the round-trip fee?

The label of row t is 1 when |close[t + horizon] / close[t] - 1| > threshold, 0 when it does not
(an unchanged close included: it clears nothing) and NaN while close[t + horizon] is unknown. A
direction forecast is worth trading only when the move it bets on pays the fees, so every
registered version ships this second head (`MagnitudeHead`, `magnitude.json` in the bundle)
beside p(up): a logistic regression on what each raw window holds, a HAR inside the window
(`window_har`: the log of the mean absolute one-candle return, and of the mean high-low range,
over the window's last hour, day and whole length) and the scaled last step of a few features.

Its baselines, each a probability per row computed from the closes up to that row only:

- `base_rate`: the rate of clearing among the newest `TRAILING_ROWS` rows whose outcome is
  known (rows s <= t - horizon), with one clear and one miss added, so a short or one-sided
  window never says 0 or 1;
- `Persistence`: the rate of clearing after a move that cleared and after one that did not,
  the last move being the label of row t - horizon (close[t - horizon] to close[t]), both
  counted on training rows;
- HAR (after Corsi's heterogeneous autoregression of realised volatility): a logistic
  regression on `har_features`, the log of the mean absolute one-candle return over the last
  1, 24 and 168 candles; fitted in `mlproject.magnitude_fit` (it needs scikit-learn).

Only numpy here: this module ships inside the registered model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

KIND = "magnitude-window-har"
# The heads shipped before the window inputs: a logistic regression on the scaled last step of
# every feature. Their `magnitude.json` still loads, as a head without window inputs.
LEGACY_KIND = "magnitude-logistic"
TRAILING_ROWS = 720  # the base rate's window: 30 days of hourly candles
HAR_SPANS: tuple[int, ...] = (1, 24, 168)  # an hour, a day and a week of hourly candles
# The mean absolute return is floored before its log: an unchanged close would otherwise give
# log 0 = -inf. 1e-5 (0.1 basis point) lies below every nonzero hourly move of the bundled pairs.
HAR_FLOOR = 1e-5
_FIELDS = (
    "kind",
    "names",
    "last_step",
    "window",
    "spans",
    "center",
    "scale",
    "coef",
    "intercept",
    "threshold",
    "horizon",
)
_LEGACY_FIELDS = ("kind", "names", "coef", "intercept", "threshold", "horizon")


class MagnitudeError(ValueError):
    """A magnitude head or its inputs are invalid; the message names the value."""


def round_trip_threshold(trading_fee: float) -> float:
    """The absolute return a round trip must clear: the fee paid on entry and on exit."""
    if not (math.isfinite(trading_fee) and trading_fee >= 0):
        raise MagnitudeError(f"the trading fee must be a finite number >= 0, got {trading_fee!r}")
    return 2.0 * float(trading_fee)


def window_har(values: np.ndarray, *, spans: tuple[int, ...]) -> np.ndarray:
    """A HAR inside each window: (n, k * len(spans)), for each of the k columns of `values`
    (n, steps, k) and each span s, the log of the mean absolute value over the window's last s
    steps, floored at `HAR_FLOOR`; column j * len(spans) + i is column j's i-th span."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 3:
        raise MagnitudeError(f"expected windows of shape (n, steps, k), got {data.shape}")
    _check_spans(spans)
    if spans and spans[-1] > data.shape[1]:
        raise MagnitudeError(
            f"a span of {spans[-1]} steps needs windows that long, got shape {data.shape}"
        )
    if not spans:
        return np.empty((data.shape[0], 0))
    magnitude = np.abs(data)
    means = np.stack([magnitude[:, -span:, :].mean(axis=1) for span in spans], axis=2)
    return np.log(np.maximum(means, HAR_FLOOR)).reshape(data.shape[0], -1)


def _check_spans(spans: tuple[int, ...]) -> None:
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in spans):
        raise MagnitudeError(f"spans must be integers >= 1, got {spans!r}")
    if any(b <= a for a, b in pairwise(spans)):
        raise MagnitudeError(f"spans must increase, got {spans!r}")


@dataclass(frozen=True, eq=False)
class MagnitudeHead:
    """P(|r| > threshold) = 1 / (1 + exp(-(coef . x + intercept))), r the return over `horizon`
    candles and x a window's inputs, in this order:

    - the last step's values of the `last_step` features, scaled with the bundle's scaler;
    - `window_har` of the `window` features over `spans` (raw, as the window holds them),
      standardised: (value - center) / scale.

    `names` are the bundle's features, in the order of a window's last axis. A head of the
    older kind (`LEGACY_KIND`) reads the scaled last step of every feature and no window.
    """

    names: tuple[str, ...]
    last_step: tuple[str, ...]
    window: tuple[str, ...]
    spans: tuple[int, ...]
    center: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float
    horizon: int

    def __post_init__(self) -> None:
        for attr in ("names", "last_step", "window", "spans"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        for attr in ("last_step", "window"):
            chosen = getattr(self, attr)
            unknown = [name for name in chosen if name not in self.names]
            if unknown:
                raise MagnitudeError(f"{attr} names {unknown[0]!r}, not one of the features")
            if len(set(chosen)) != len(chosen):
                raise MagnitudeError(f"{attr} names a feature twice: {list(chosen)!r}")
        _check_spans(self.spans)
        if bool(self.window) != bool(self.spans):
            raise MagnitudeError(
                f"window features need spans and spans window features, got {list(self.window)!r}"
                f" and {list(self.spans)!r}"
            )
        n_window = len(self.window) * len(self.spans)
        center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        if center.size != n_window or scale.size != n_window:
            raise MagnitudeError(
                f"{len(self.window)} window features over {len(self.spans)} spans need "
                f"{n_window} centers and scales, got {center.size} and {scale.size}"
            )
        if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise MagnitudeError("centers must be finite and scales finite and positive")
        coef = np.asarray(self.coef, dtype=np.float64).reshape(-1)
        if coef.size != len(self.last_step) + n_window:
            raise MagnitudeError(
                f"the magnitude head has {coef.size} coefficients for {len(self.last_step)} "
                f"last-step features and {n_window} window inputs"
            )
        if not np.isfinite(coef).all():
            bad = int(np.flatnonzero(~np.isfinite(coef))[0])
            raise MagnitudeError(
                f"coefficients must be finite: that of {self.input_names[bad]!r} is "
                f"{float(coef[bad])!r}"
            )
        if not math.isfinite(self.intercept):
            raise MagnitudeError(f"the intercept must be finite, got {self.intercept!r}")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise MagnitudeError(f"threshold must be a finite number >= 0, got {self.threshold!r}")
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1:
            raise MagnitudeError(f"horizon must be an integer >= 1, got {self.horizon!r}")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "coef", coef)

    @property
    def input_names(self) -> tuple[str, ...]:
        """One name per coefficient: the last-step features, then `feature@span` per window
        input."""
        return (
            *self.last_step,
            *(f"{name}@{span}" for name in self.window for span in self.spans),
        )

    @property
    def window_length(self) -> int:
        """The fewest steps a window must hold: the longest span (1 without window inputs)."""
        return self.spans[-1] if self.spans else 1

    def proba(self, windows: np.ndarray, scaled_last: np.ndarray) -> np.ndarray:
        """P(|r| > threshold) of each window, float64.

        Args:
            windows: raw feature windows (n, steps, len(names)), steps >= `window_length`.
            scaled_last: their last steps (n, len(names)), scaled with the bundle's scaler.
        """
        data = np.asarray(windows, dtype=np.float64)
        last = np.asarray(scaled_last, dtype=np.float64)
        width = len(self.names)
        if data.ndim != 3 or data.shape[2] != width or data.shape[1] < self.window_length:
            raise MagnitudeError(
                f"expected raw windows of shape (n, >= {self.window_length}, {width}), got "
                f"{data.shape}"
            )
        if last.shape != (data.shape[0], width):
            raise MagnitudeError(
                f"expected scaled last steps of shape ({data.shape[0]}, {width}), got {last.shape}"
            )
        index = {name: k for k, name in enumerate(self.names)}
        har = window_har(data[:, :, [index[n] for n in self.window]], spans=self.spans)
        x = np.hstack(
            [last[:, [index[n] for n in self.last_step]], (har - self.center) / self.scale]
        )
        logit = x @ self.coef + self.intercept
        return 0.5 * (1.0 + np.tanh(0.5 * logit))  # the logistic function, without overflow

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "names": list(self.names),
            "last_step": list(self.last_step),
            "window": list(self.window),
            "spans": [int(s) for s in self.spans],
            "center": [float(c) for c in self.center],
            "scale": [float(s) for s in self.scale],
            "coef": [float(c) for c in self.coef],
            "intercept": float(self.intercept),
            "threshold": float(self.threshold),
            "horizon": int(self.horizon),
        }

    @classmethod
    def from_dict(cls, data: object) -> MagnitudeHead:
        """The head `to_dict` wrote, or one of `LEGACY_KIND`; any other key, a missing one or a
        wrong type is refused."""
        if not isinstance(data, dict):
            raise MagnitudeError(f"expected a JSON object, got {type(data).__name__}")
        kind = data.get("kind")
        if kind not in (KIND, LEGACY_KIND):
            raise MagnitudeError(
                f"unknown magnitude head kind {kind!r}: expected {KIND!r} (or the older "
                f"{LEGACY_KIND!r})"
            )
        fields = _FIELDS if kind == KIND else _LEGACY_FIELDS
        missing = [key for key in fields if key not in data]
        extra = sorted(str(key) for key in data if key not in fields)
        if missing or extra:
            raise MagnitudeError(
                f"a {kind!r} head has the keys {', '.join(fields)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        if kind == LEGACY_KIND:  # the scaled last step of every feature, no window inputs
            data = {
                **data,
                "last_step": data["names"],
                "window": [],
                "spans": [],
                "center": [],
                "scale": [],
            }
        horizon = data["horizon"]
        if isinstance(horizon, bool) or not isinstance(horizon, int):
            raise MagnitudeError(f"'horizon' must be an integer, got {horizon!r}")
        spans = data["spans"]
        if not isinstance(spans, list) or any(
            isinstance(s, bool) or not isinstance(s, int) for s in spans
        ):
            raise MagnitudeError(f"'spans' must be a list of integers, got {spans!r}")
        return cls(
            names=_names(data["names"], "names"),
            last_step=_names(data["last_step"], "last_step"),
            window=_names(data["window"], "window"),
            spans=tuple(spans),
            center=_numbers(data["center"], "center"),
            scale=_numbers(data["scale"], "scale"),
            coef=_numbers(data["coef"], "coef"),
            intercept=_number(data["intercept"], "intercept"),
            threshold=_number(data["threshold"], "threshold"),
            horizon=horizon,
        )


def _names(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise MagnitudeError(f"{key!r} must be a list of feature names, got {value!r}")
    return tuple(value)


def _numbers(value: object, key: str) -> np.ndarray:
    if not isinstance(value, list):
        raise MagnitudeError(f"{key!r} must be a list of numbers, got {value!r}")
    return np.array([_number(v, key) for v in value], dtype=np.float64)


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MagnitudeError(f"{key!r} must hold numbers, got {value!r}")
    return float(value)


def _check_horizon(horizon: int) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise MagnitudeError(f"horizon must be an integer >= 1, got {horizon!r}")


def absolute_moves(close: np.ndarray, *, horizon: int) -> np.ndarray:
    """|close[t + horizon] / close[t] - 1| per row t; NaN where the future close is unknown."""
    _check_horizon(horizon)
    prices = np.asarray(close, dtype=np.float64)
    if prices.ndim != 1:
        raise MagnitudeError(f"close must be one-dimensional, got shape {prices.shape}")
    moves = np.full(prices.shape, np.nan)
    if prices.size > horizon:
        moves[:-horizon] = np.abs(prices[horizon:] / prices[:-horizon] - 1.0)
    return moves


def move_labels(close: np.ndarray, *, horizon: int, threshold: float | np.ndarray) -> np.ndarray:
    """1.0 where the move over `horizon` candles clears `threshold`, 0.0 where not, NaN where
    the future close (or a per-row threshold) is unknown.

    Args:
        close: closes, oldest first.
        horizon: candles ahead.
        threshold: the absolute return to clear: one number, or one per row (NaN: unknown).
    """
    moves = absolute_moves(close, horizon=horizon)
    if np.ndim(threshold) == 0:
        value = float(threshold)
        if not (math.isfinite(value) and value >= 0):
            raise MagnitudeError(f"threshold must be a finite number >= 0, got {threshold!r}")
        bound = np.full(moves.shape, value)
    else:
        bound = np.asarray(threshold, dtype=np.float64)
        if bound.shape != moves.shape:
            raise MagnitudeError(
                f"a per-row threshold needs one value per close: {bound.shape} for {moves.shape}"
            )
    labels = (moves > bound).astype(np.float64)
    labels[~(np.isfinite(moves) & np.isfinite(bound))] = np.nan
    return labels


def _known_by(labels: np.ndarray, horizon: int) -> np.ndarray:
    """Each row's view of the past: labels[t - horizon] at t (NaN for t < horizon)."""
    _check_horizon(horizon)
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 1:
        raise MagnitudeError(f"labels must be one-dimensional, got shape {y.shape}")
    seen = np.full(y.shape, np.nan)
    if y.size > horizon:
        seen[horizon:] = y[:-horizon]
    return seen


def last_cleared(labels: np.ndarray, *, horizon: int) -> np.ndarray:
    """Whether the last complete move cleared at each row: the label of row t - horizon (the
    move from close[t - horizon] to close[t]); NaN where it is unknown."""
    return _known_by(labels, horizon)


def base_rate(labels: np.ndarray, *, horizon: int, window: int = TRAILING_ROWS) -> np.ndarray:
    """P(clear) at each row t: (clears + 1) / (known + 2) over the labels of rows
    t - horizon - window + 1 .. t - horizon (those known at t), unknown labels skipped."""
    if window < 1:
        raise MagnitudeError(f"window must be at least 1 row, got {window!r}")
    seen = _known_by(labels, horizon)
    known = np.isfinite(seen)
    clears = np.concatenate([[0.0], np.cumsum(np.where(known, seen, 0.0))])
    counts = np.concatenate([[0.0], np.cumsum(known)])
    stop = np.arange(1, seen.size + 1)
    start = np.maximum(stop - window, 0)
    return (clears[stop] - clears[start] + 1.0) / (counts[stop] - counts[start] + 2.0)


@dataclass(frozen=True)
class Persistence:
    """P(clear | the last move cleared) and P(clear | it did not), counted on training rows
    as (clears + 1) / (rows + 2); `overall` where the last move is unknown."""

    after_clear: float
    after_miss: float
    overall: float

    @classmethod
    def fit(cls, labels: np.ndarray, rows: np.ndarray, *, horizon: int) -> Persistence:
        """Rates from the training rows `rows` (positions) whose label is known."""
        y = np.asarray(labels, dtype=np.float64)
        at = np.asarray(rows, dtype=np.int64)
        last = last_cleared(y, horizon=horizon)[at]
        outcome = y[at]
        known = np.isfinite(outcome)
        if not known.any():
            raise MagnitudeError("the persistence baseline needs a training row with an outcome")

        def rate(mask: np.ndarray) -> float:
            return float((outcome[mask].sum() + 1.0) / (mask.sum() + 2.0))

        return cls(
            after_clear=rate(known & (last == 1.0)),
            after_miss=rate(known & (last == 0.0)),
            overall=rate(known),
        )

    def proba(self, labels: np.ndarray, rows: np.ndarray, *, horizon: int) -> np.ndarray:
        """P(clear) at each of `rows` (positions) from whether its last move cleared."""
        last = last_cleared(labels, horizon=horizon)[np.asarray(rows, dtype=np.int64)]
        return np.where(
            last == 1.0, self.after_clear, np.where(last == 0.0, self.after_miss, self.overall)
        )


def har_features(close: np.ndarray, *, spans: tuple[int, ...] = HAR_SPANS) -> np.ndarray:
    """(n, len(spans)): at each row t, log of the mean |close[j] / close[j - 1] - 1| over the
    last `span` candles j <= t (fewer near the start), floored at `HAR_FLOOR`; NaN at row 0."""
    prices = np.asarray(close, dtype=np.float64)
    if prices.ndim != 1:
        raise MagnitudeError(f"close must be one-dimensional, got shape {prices.shape}")
    if any(span < 1 for span in spans):
        raise MagnitudeError(f"spans must be at least 1 candle, got {spans!r}")
    returns = np.zeros(prices.shape)
    returns[1:] = np.abs(prices[1:] / prices[:-1] - 1.0)
    total = np.concatenate([[0.0], np.cumsum(returns)])
    stop = np.arange(1, prices.size + 1)
    out = np.full((prices.size, len(spans)), np.nan)
    for k, span in enumerate(spans):
        start = np.maximum(stop - span, 1)  # row 0 has no return
        count = stop - start
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (total[stop] - total[start]) / count
        out[:, k] = np.where(count > 0, np.log(np.maximum(mean, HAR_FLOOR)), np.nan)
    return out
