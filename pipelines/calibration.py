"""Probability calibration: a monotone map from a model's raw probability to a calibrated one.

Chosen on the validation rows of a training (`choose_calibrator`), saved in the serving bundle
as `calibration.json` and applied after the ONNX output, so that every consumer of a bundle (the
service, the pyfunc model, the promotion gate) reads the same probabilities. numpy only (the
paired interval and the log loss come from `pipelines.lifecycle`): the service and
`mlflow models serve` load it without scikit-learn or TensorFlow.

What a training may ask for (`ML_CALIBRATION`, `MODES`):

- `none` (the default): the identity;
- `temperature`: p' = sigmoid(logit(p) / T), one parameter fitted by minimising the log loss;
- `platt`: p' = sigmoid(a * logit(p) + b), two parameters (a slope like 1 / T, and an intercept
  that also corrects a shifted rate of "up"), fitted by Newton's method with Platt's smoothed
  targets so that one-class rows stay finite.

Whatever is asked, a calibrator is kept only when it helps on rows it was not fitted on: it is
fitted on the first half of the validation rows (time order) and compared with the raw
probabilities on the second half through the paired interval of the per-row log-loss difference
(calibrated minus raw); only an interval wholly below 0 keeps it, fitted again on all the
validation rows. Otherwise the raw probabilities are served.

What a bundle may hold (`METHODS`) also includes `isotonic`, a step function between knots that
versions registered before this rule were fitted with: it is read and applied, never fitted.

A calibrated probability is clipped into [EPS, 1 - EPS], so one confident miss stays finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from pipelines.lifecycle.intervals import PairedVerdict, paired_interval
from pipelines.lifecycle.scores import log_losses

Method = Literal["none", "temperature", "platt", "isotonic"]
Mode = Literal["none", "temperature", "platt"]
METHODS: tuple[Method, ...] = get_args(Method)
MODES: tuple[Mode, ...] = get_args(Mode)
# Asked for by earlier settings; refused with why (`check_mode`).
_RETIRED_MODES = {
    "auto": "it picked among three calibrators on a few hundred rows, where the standard error "
    "of a loss difference is as large as the differences, and made models worse out of sample",
    "isotonic": "a step function of up to one knot per row overfits the few hundred validation "
    "rows; versions fitted with it still load and serve",
}
FORMAT_VERSION = 1
EPS = 1e-3  # calibrated probabilities stay within [EPS, 1 - EPS]
_RAW_EPS = 1e-7  # raw probabilities are clipped this far from 0 and 1 before the logit
# A calibrator is compared on the second half of the validation rows only when each half has at
# least this many rows; with fewer the raw probabilities are kept.
MIN_HALF_ROWS = 20
# The temperature is searched within these bounds (1 / 100 flattens any logit to about 0.5).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
DEFAULT_BINS = 10


class CalibrationError(ValueError):
    """A calibrator's input or stored form is invalid; the message names the problem."""


def check_mode(value: object) -> Mode:
    """`value` as a calibration mode, or a CalibrationError naming the allowed ones (and why a
    retired one went)."""
    allowed = ", ".join(MODES)
    if value in _RETIRED_MODES:
        raise CalibrationError(
            f"calibration {value!r} is no longer offered: {_RETIRED_MODES[str(value)]}; "
            f"allowed: {allowed} (a calibrator is kept only when it helps on held rows)"
        )
    if value not in MODES:
        raise CalibrationError(f"unknown calibration mode {value!r}; allowed: {allowed}")
    return value


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map; `apply` takes raw probabilities and returns calibrated ones.

    Attributes:
        method: none, temperature, platt or isotonic.
        temperature: T of p' = sigmoid(logit(p) / T) (1 otherwise).
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
    temperature: float = 1.0

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
        if self.method != "temperature" and self.temperature != 1.0:
            raise CalibrationError(
                f"a {self.method} calibrator has no temperature (got {self.temperature})"
            )
        if self.method != "isotonic" and (self.x or self.y):
            raise CalibrationError(f"a {self.method} calibrator has no isotonic knots")
        if self.method == "temperature" and not (
            math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise CalibrationError(
                f"temperature must be a finite positive number, got {self.temperature!r}"
            )
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
    def fit(cls, method: Mode, proba: np.ndarray, y: np.ndarray) -> Calibrator:
        """A calibrator of `method` fitted on raw probabilities `proba` and outcomes `y` (0/1)."""
        if method not in MODES:
            raise CalibrationError(
                f"cannot fit a {method!r} calibrator; allowed: {', '.join(MODES)}"
            )
        p, outcomes = _check_rows(proba, y)
        if method == "none":
            return cls()
        if p.size == 0:
            raise CalibrationError(f"no rows to fit a {method} calibrator on")
        if method == "temperature":
            return cls(
                method="temperature", temperature=_fit_temperature(p, outcomes), rows=int(p.size)
            )
        a, b = _fit_platt(p, outcomes)
        return cls(method="platt", a=a, b=b, rows=int(p.size))

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of `proba` (any shape), float64.

        `none` returns the raw values unchanged; the others clip into [EPS, 1 - EPS].
        """
        p = _check_probabilities(proba)
        if self.method == "none":
            return p
        if self.method == "temperature":
            out = _sigmoid(_logit(p) / self.temperature)
        elif self.method == "platt":
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
        if self.method == "temperature":
            data["temperature"] = self.temperature
        elif self.method == "platt":
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
        params = {
            "platt": ("a", "b"),
            "isotonic": ("x", "y"),
            "temperature": ("temperature",),
            "none": (),
        }[str(method)]
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
        if method == "temperature":
            return cls(method="temperature", temperature=_number(data, "temperature"), rows=rows)
        if method == "platt":
            return cls(method="platt", a=_number(data, "a"), b=_number(data, "b"), rows=rows)
        if method == "isotonic":
            return cls(method="isotonic", x=_numbers(data, "x"), y=_numbers(data, "y"), rows=rows)
        return cls(rows=rows)


@dataclass(frozen=True)
class CalibrationReport:
    """What `choose_calibrator` was asked, what it kept, and the evidence.

    Attributes:
        mode: what was asked (none, temperature, platt).
        method: what is served: `mode` when kept, none otherwise.
        kept: whether the asked calibrator is applied.
        reason: one sentence for the run's log.
        rows: validation rows (all of them: what a kept calibrator is fitted on at the end).
        fit_rows, held_rows: the halves of the comparison (first fitted, second scored); 0 when
            nothing was compared (none asked, or too few rows).
        held: the paired interval of calibrated minus raw per-row log loss on the held half.
        held_log_loss: mean log loss on the held half, `raw` and `calibrated` (empty without a
            comparison).
    """

    mode: Mode
    method: Method
    kept: bool
    reason: str
    rows: int
    fit_rows: int = 0
    held_rows: int = 0
    held: PairedVerdict | None = None
    held_log_loss: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "method": self.method,
            "kept": self.kept,
            "reason": self.reason,
            "rows": self.rows,
            "fit_rows": self.fit_rows,
            "held_rows": self.held_rows,
            "held": None if self.held is None else self.held.to_dict(),
            "held_log_loss": dict(self.held_log_loss),
        }


def choose_calibrator(
    proba_val: np.ndarray, y_val: np.ndarray, *, mode: Mode
) -> tuple[Calibrator, CalibrationReport]:
    """The calibrator to serve for the validation rows (time order, ties dropped), and why.

    `none` is the identity. Any other `mode` is fitted on the first half of the rows and
    compared with the raw probabilities on the second half: per-row log loss, calibrated minus
    raw, through `paired_interval`. Only an interval wholly below 0 keeps it, fitted again on all
    the rows; otherwise, and with fewer than MIN_HALF_ROWS rows a half, the identity is served.
    """
    mode = check_mode(mode)
    p, outcomes = _check_rows(proba_val, y_val)
    n = int(p.size)
    if mode == "none":
        reason = "none asked for (ML_CALIBRATION=none): raw probabilities served"
        return Calibrator(), CalibrationReport(mode, "none", False, reason, rows=n)
    half = n // 2
    if half < MIN_HALF_ROWS:
        reason = (
            f"{mode} not kept: {n} validation rows are too few to test it on halves of at least "
            f"{MIN_HALF_ROWS}; raw probabilities served"
        )
        return Calibrator(), CalibrationReport(mode, "none", False, reason, rows=n)
    first, held = slice(0, half), slice(half, n)
    trial = Calibrator.fit(mode, p[first], outcomes[first])
    raw_losses = log_losses(p[held], outcomes[held])
    calibrated_losses = log_losses(trial.apply(p[held]), outcomes[held])
    verdict = paired_interval(calibrated_losses - raw_losses)
    kept = verdict.better()
    evidence = (
        f"on the last {n - half} validation rows, fitted on the first {half}, its per-row log "
        f"loss minus the raw one is {verdict.words()}"
    )
    if kept:
        calibrator = Calibrator.fit(mode, p, outcomes)
        reason = f"{mode} kept, refitted on all {n} validation rows: {evidence}, wholly below 0"
    else:
        calibrator = Calibrator()
        reason = f"{mode} not kept (raw probabilities served): {evidence}, not wholly below 0"
    report = CalibrationReport(
        mode=mode,
        method=calibrator.method,
        kept=kept,
        reason=reason,
        rows=n,
        fit_rows=half,
        held_rows=n - half,
        held=verdict,
        held_log_loss={
            "raw": float(raw_losses.mean()),
            "calibrated": float(calibrated_losses.mean()),
        },
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


def _fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] of least log loss of sigmoid(logit(p) / T).

    The loss is convex in s = 1 / T, and its slope mean(z * (sigmoid(s z) - y)) increases with
    s, so the minimum is where the slope crosses 0: found by bisection on log s.
    """
    z = _logit(p)
    if not np.any(z):
        return 1.0  # every raw probability is 0.5: any T gives the same answer

    def slope(s: float) -> float:
        return float(np.mean(z * (_sigmoid(s * z) - y)))

    low, high = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    if slope(low) >= 0.0:
        return MAX_TEMPERATURE
    if slope(high) <= 0.0:
        return MIN_TEMPERATURE
    for _ in range(200):
        middle = math.sqrt(low * high)
        if slope(middle) < 0.0:
            low = middle
        else:
            high = middle
        if high / low < 1.0 + 1e-12:
            break
    return 1.0 / math.sqrt(low * high)


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
