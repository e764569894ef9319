"""Probability calibration: a monotone map from a model's raw probability to a calibrated one.

Fitted on the validation rows of a training (`choose_calibrator`), saved in the serving bundle
as `calibration.json` and applied after the ONNX output, so that every consumer of a bundle (the
service, the pyfunc model, the promotion gate) reads calibrated probabilities. Pure numpy: the
service and `mlflow models serve` load it without scikit-learn or TensorFlow.

Methods:

- `none`: the identity (also what a bundle without `calibration.json` gets, so versions
  registered before calibration serve exactly what they served);
- `platt`: p' = sigmoid(a * logit(p) + b), a logistic regression on the raw logit fitted by
  Newton's method, with Platt's smoothed targets so that one-class rows stay finite;
- `isotonic`: the pool-adjacent-violators fit (the best non-decreasing step function in log
  loss and squared error alike), applied by linear interpolation between its knots and held
  constant beyond the first and last.

A calibrated probability is clipped into [EPS, 1 - EPS]: an isotonic block of only "up" rows
would otherwise say 1.0, and one wrong row then costs an infinite log loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

Method = Literal["none", "platt", "isotonic"]
Mode = Literal["auto", "none", "platt", "isotonic"]
METHODS: tuple[Method, ...] = get_args(Method)
MODES: tuple[Mode, ...] = get_args(Mode)
FORMAT_VERSION = 1
EPS = 1e-3  # calibrated probabilities stay within [EPS, 1 - EPS]
_RAW_EPS = 1e-7  # raw probabilities are clipped this far from 0 and 1 before the logit
_LOSS_EPS = 1e-15  # as mlproject.metrics.log_loss
# Auto compares candidates on the second half of the validation rows only when each half has
# at least this many rows; with fewer it keeps the raw probabilities.
MIN_HALF_ROWS = 20
DEFAULT_BINS = 10


class CalibrationError(ValueError):
    """A calibrator's input or stored form is invalid; the message names the problem."""


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map; `apply` takes raw probabilities and returns calibrated ones.

    Attributes:
        method: none, platt or isotonic.
        a, b: Platt's slope and intercept on the raw logit (1 and 0 otherwise).
        x, y: isotonic knots: raw probabilities (strictly increasing) and their calibrated
            values (non-decreasing); empty otherwise.
        rows: how many rows it was fitted on (0 for none).
    """

    method: Method = "none"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    rows: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(
                f"unknown calibration method {self.method!r}; allowed: {', '.join(METHODS)}"
            )
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 0:
            raise CalibrationError(f"rows must be a non-negative integer, got {self.rows!r}")
        if self.method != "platt" and (self.a != 1.0 or self.b != 0.0):
            raise CalibrationError(
                f"a {self.method} calibrator has no a, b (got {self.a}, {self.b})"
            )
        if self.method != "isotonic" and (self.x or self.y):
            raise CalibrationError(f"a {self.method} calibrator has no isotonic knots")
        if self.method == "platt":
            for name, value in (("a", self.a), ("b", self.b)):
                if not math.isfinite(value):
                    raise CalibrationError(f"platt {name} must be a finite number, got {value!r}")
        if self.method == "isotonic":
            _check_knots(self.x, self.y)

    @classmethod
    def identity(cls) -> Calibrator:
        return cls()

    @classmethod
    def fit(cls, method: Method, proba: np.ndarray, y: np.ndarray) -> Calibrator:
        """A calibrator of `method` fitted on raw probabilities `proba` and outcomes `y` (0/1)."""
        if method not in METHODS:
            raise CalibrationError(
                f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}"
            )
        p, outcomes = _check_rows(proba, y)
        if method == "none":
            return cls()
        if p.size == 0:
            raise CalibrationError(f"no rows to fit a {method} calibrator on")
        if method == "platt":
            a, b = _fit_platt(p, outcomes)
            return cls(method="platt", a=a, b=b, rows=int(p.size))
        knots_x, knots_y = _fit_isotonic(p, outcomes)
        return cls(method="isotonic", x=knots_x, y=knots_y, rows=int(p.size))

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of `proba` (any shape), float64.

        `none` returns the raw values unchanged; the others clip into [EPS, 1 - EPS].
        """
        p = _check_probabilities(proba)
        if self.method == "none":
            return p
        if self.method == "platt":
            out = _sigmoid(self.a * _logit(p) + self.b)
        else:
            out = np.interp(p, np.asarray(self.x), np.asarray(self.y))
        return np.clip(out, EPS, 1.0 - EPS)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON form (what `calibration.json` holds)."""
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "rows": self.rows,
        }
        if self.method == "platt":
            data |= {"a": self.a, "b": self.b}
        elif self.method == "isotonic":
            data |= {"x": list(self.x), "y": list(self.y)}
        return data

    @classmethod
    def from_dict(cls, data: object) -> Calibrator:
        """Read `to_dict`'s form back; anything else is refused with what is wrong in it."""
        if not isinstance(data, Mapping):
            raise CalibrationError(f"a calibrator must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CalibrationError(
                f"calibration format_version {version!r} is not supported (expected "
                f"{FORMAT_VERSION})"
            )
        method = data.get("method")
        if method not in METHODS:
            raise CalibrationError(
                f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}"
            )
        params = {"platt": ("a", "b"), "isotonic": ("x", "y"), "none": ()}[str(method)]
        allowed = {"format_version", "method", "rows", *params}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise CalibrationError(
                f"a {method} calibrator has no field(s) {', '.join(map(str, unknown))}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        missing = [key for key in ("rows", *params) if key not in data]
        if missing:
            raise CalibrationError(f"the {method} calibrator lacks {', '.join(missing)}")
        rows = data["rows"]
        if isinstance(rows, bool) or not isinstance(rows, int):
            raise CalibrationError(f"calibration rows must be an integer, got {rows!r}")
        if method == "platt":
            return cls(method="platt", a=_number(data, "a"), b=_number(data, "b"), rows=rows)
        if method == "isotonic":
            return cls(method="isotonic", x=_numbers(data, "x"), y=_numbers(data, "y"), rows=rows)
        return cls(rows=rows)


@dataclass(frozen=True)
class CalibrationReport:
    """How `choose_calibrator` chose: each candidate's log loss on the held half, and why.

    Attributes:
        mode: what was asked (auto, none, platt, isotonic).
        method: what was chosen.
        reason: one sentence for the run's log.
        rows: validation rows the chosen calibrator is fitted on (all of them).
        fit_rows, held_rows: the halves the candidates were compared on (first half fitted,
            second half scored); 0 when there were too few rows to compare.
        held_log_loss: candidate -> mean log loss on the held half (empty without comparison).
    """

    mode: Mode
    method: Method
    reason: str
    rows: int
    fit_rows: int = 0
    held_rows: int = 0
    held_log_loss: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "method": self.method,
            "reason": self.reason,
            "rows": self.rows,
            "fit_rows": self.fit_rows,
            "held_rows": self.held_rows,
            "held_log_loss": dict(self.held_log_loss),
        }


def choose_calibrator(
    proba_val: np.ndarray, y_val: np.ndarray, *, mode: Mode
) -> tuple[Calibrator, CalibrationReport]:
    """The calibrator of the validation rows, by `mode`, and how it was chosen.

    Every candidate (none, platt, isotonic) is fitted on the first half of the rows (in time
    order, as given) and scored by log loss on the second. `auto` takes the lowest of these
    held-half losses (an in-sample comparison would always pick isotonic); a tie goes to the
    simpler method. The chosen method is then fitted again on all the rows. With fewer than
    2 * MIN_HALF_ROWS rows `auto` keeps the raw probabilities (none).
    """
    if mode not in MODES:
        raise CalibrationError(f"unknown calibration mode {mode!r}; allowed: {', '.join(MODES)}")
    p, outcomes = _check_rows(proba_val, y_val)
    n = int(p.size)
    half = n // 2
    losses: dict[str, float] = {}
    if half >= MIN_HALF_ROWS:
        first, held = slice(0, half), slice(half, n)
        for candidate in METHODS:
            fitted = Calibrator.fit(candidate, p[first], outcomes[first])
            losses[candidate] = _log_loss(outcomes[held], fitted.apply(p[held]))
    compared = {"fit_rows": half, "held_rows": n - half} if losses else {}
    if mode == "auto":
        if not losses:
            method: Method = "none"
            reason = (
                f"{n} validation rows are too few to compare calibrators on halves of at least "
                f"{MIN_HALF_ROWS}; raw probabilities kept"
            )
        else:
            # METHODS is ordered simplest first, and min() keeps the first of equals.
            method = min(METHODS, key=lambda m: losses[m])
            reason = (
                f"lowest log loss on the second half of the validation rows when fitted on "
                f"the first: {method} {losses[method]:.5f} ("
                + ", ".join(f"{m} {losses[m]:.5f}" for m in METHODS)
                + ")"
            )
    else:
        method = mode
        reason = f"{mode} asked for (ML_CALIBRATION={mode})"
    calibrator = Calibrator.fit(method, p, outcomes)
    report = CalibrationReport(
        mode=mode,
        method=method,
        reason=reason,
        rows=calibrator.rows if method != "none" else n,
        held_log_loss=losses,
        **compared,
    )
    return calibrator, report


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of predicted probability: its bounds, rows, mean prediction and rate of up."""

    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "count": self.count,
            "mean_predicted": self.mean_predicted,
            "observed_rate": self.observed_rate,
        }


def reliability_curve(
    proba: np.ndarray, y: np.ndarray, *, bins: int = DEFAULT_BINS
) -> list[ReliabilityBin]:
    """The non-empty bins of `bins` equal-width bins over [0, 1] (1.0 falls in the last)."""
    p, outcomes = _check_rows(proba, y)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise CalibrationError(f"bins must be a positive integer, got {bins!r}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    curve = []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        if count:
            curve.append(
                ReliabilityBin(
                    lower=float(edges[b]),
                    upper=float(edges[b + 1]),
                    count=count,
                    mean_predicted=float(p[members].mean()),
                    observed_rate=float(outcomes[members].mean()),
                )
            )
    return curve


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Row-weighted mean |mean predicted - observed rate| over `bins` equal-width bins.

    NaN for no rows.
    """
    curve = reliability_curve(proba, y, bins=bins)
    total = sum(b.count for b in curve)
    if total == 0:
        return float("nan")
    return float(sum(b.count * abs(b.mean_predicted - b.observed_rate) for b in curve) / total)


# --- fitting -----------------------------------------------------------------------------------


def _fit_platt(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Newton's method on the log loss of sigmoid(a * logit(p) + b), with Platt's targets.

    Targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0 (Platt 1999), so the optimum
    is finite even when the rows hold one class; the step is halved until the loss falls.
    """
    positives = float(y.sum())
    negatives = float(y.size) - positives
    target = np.where(y == 1, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))
    design = np.column_stack([_logit(p), np.ones_like(p)])

    def loss(w: np.ndarray) -> float:
        t = design @ w
        # log(1 + e^t) - target * t, stably
        return float(np.mean(np.logaddexp(0.0, t) - target * t))

    w = np.array([1.0, 0.0])
    current = loss(w)
    for _ in range(100):
        q = _sigmoid(design @ w)
        gradient = design.T @ (q - target) / p.size
        hessian = (design * (q * (1.0 - q))[:, None]).T @ design / p.size
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        scale = 1.0
        while scale > 1e-10:
            candidate = w - scale * step
            value = loss(candidate)
            if value <= current:
                break
            scale /= 2.0
        else:
            break
        w, previous, current = candidate, current, value
        if np.max(np.abs(scale * step)) < 1e-10 or previous - current < 1e-14:
            break
    return float(w[0]), float(w[1])


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pool adjacent violators on the rows sorted by `p` (ties pooled first).

    The knots are each block's first and last distinct raw probability, both at the block's
    rate of up; between blocks the map is the straight line joining them.
    """
    order = np.argsort(p, kind="mergesort")
    values, starts = np.unique(p[order], return_index=True)
    sums = np.add.reduceat(y[order].astype(np.float64), starts)
    weights = np.diff(np.append(starts, p.size)).astype(np.float64)
    # Each block: [sum of y, rows, index of its first and last distinct value].
    block_sum: list[float] = []
    block_weight: list[float] = []
    block_first: list[int] = []
    block_last: list[int] = []
    for i in range(values.size):
        block_sum.append(float(sums[i]))
        block_weight.append(float(weights[i]))
        block_first.append(i)
        block_last.append(i)
        while (
            len(block_sum) > 1
            and block_sum[-2] / block_weight[-2] >= block_sum[-1] / block_weight[-1]
        ):
            merged_sum, merged_weight = block_sum.pop(), block_weight.pop()
            block_first.pop()
            merged_last = block_last.pop()
            block_sum[-1] += merged_sum
            block_weight[-1] += merged_weight
            block_last[-1] = merged_last
    knots_x: list[float] = []
    knots_y: list[float] = []
    for total, weight, first, last in zip(
        block_sum, block_weight, block_first, block_last, strict=True
    ):
        rate = total / weight
        for index in (first, last) if last != first else (first,):
            knots_x.append(float(values[index]))
            knots_y.append(rate)
    return tuple(knots_x), tuple(knots_y)


# --- checks and helpers ------------------------------------------------------------------------


def _check_probabilities(proba: np.ndarray) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        bad = p[~(np.isfinite(p) & (p >= 0.0) & (p <= 1.0))]
        raise CalibrationError(
            f"probabilities must be finite and within [0, 1]; got {bad.size} outside, e.g. "
            f"{float(bad.flat[0])!r}"
        )
    return p


def _check_rows(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _check_probabilities(proba)
    outcomes = np.asarray(y)
    if p.ndim != 1 or outcomes.shape != p.shape:
        raise CalibrationError(
            f"expected 1-D probabilities and outcomes of the same length, got shapes {p.shape} "
            f"and {outcomes.shape}"
        )
    if outcomes.size and not np.isin(outcomes, (0, 1)).all():
        raise CalibrationError(
            f"outcomes must be 0 or 1, got values {sorted(set(np.unique(outcomes).tolist()))[:5]}"
        )
    return p, outcomes.astype(np.float64)


def _check_knots(x: tuple[float, ...], y: tuple[float, ...]) -> None:
    if len(x) != len(y) or not x:
        raise CalibrationError(
            f"isotonic knots need x and y of the same non-zero length, got {len(x)} and {len(y)}"
        )
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    for name, values in (("x", xs), ("y", ys)):
        if not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            raise CalibrationError(f"isotonic knots {name} must lie within [0, 1]")
    if np.any(np.diff(xs) <= 0):
        raise CalibrationError("isotonic knots x must be strictly increasing")
    if np.any(np.diff(ys) < 0):
        raise CalibrationError("isotonic knots y must be non-decreasing")


def _number(data: Mapping[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationError(f"calibration {key} must be a number, got {value!r}")
    return float(value)


def _numbers(data: Mapping[str, Any], key: str) -> tuple[float, ...]:
    values = data[key]
    if not isinstance(values, list) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) for v in values
    ):
        raise CalibrationError(f"calibration {key} must be a list of numbers, got {values!r:.80}")
    return tuple(float(v) for v in values)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _RAW_EPS, 1.0 - _RAW_EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * t)))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    # Not pipelines.verdicts.log_losses: this module ships alone in the registered pyfunc
    # model's code (pipelines/pyfunc_model.py), which has no other module of this project.
    q = np.clip(p, _LOSS_EPS, 1.0 - _LOSS_EPS)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))
