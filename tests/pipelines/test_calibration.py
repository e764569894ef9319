"""Probability calibration: Platt and isotonic fits, the auto choice, storage, and ECE."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from pipelines.calibration import (
    EPS,
    MIN_HALF_ROWS,
    CalibrationError,
    Calibrator,
    choose_calibrator,
    expected_calibration_error,
    reliability_curve,
)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-t)))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(p) - np.log1p(-p))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _distorted(n: int, *, a: float, b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw probabilities whose true probability is sigmoid(a * logit(raw) + b), and outcomes."""
    rng = np.random.default_rng(seed)
    raw = _sigmoid(rng.normal(0.0, 1.0, n))
    truth = _sigmoid(a * _logit(raw) + b)
    return raw, (rng.random(n) < truth).astype(np.int8)


def _calibrated(n: int, *, seed: int, spread: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are their own truth (near 0.5, as hourly direction is)."""
    rng = np.random.default_rng(seed)
    p = np.clip(0.5 + rng.normal(0.0, spread, n), 0.02, 0.98)
    return p, (rng.random(n) < p).astype(np.int8)


def test_platt_recovers_a_known_slope_and_intercept() -> None:
    raw, y = _distorted(50_000, a=0.6, b=-0.4, seed=0)

    calibrator = Calibrator.fit("platt", raw, y)

    assert calibrator.method == "platt"
    assert calibrator.rows == 50_000
    assert calibrator.a == pytest.approx(0.6, abs=0.03)
    assert calibrator.b == pytest.approx(-0.4, abs=0.03)
    probe = np.array([0.1, 0.5, 0.9])
    expected = _sigmoid(calibrator.a * _logit(probe) + calibrator.b)
    np.testing.assert_allclose(calibrator.apply(probe), expected, rtol=1e-12)


def test_platt_stays_finite_on_rows_of_one_class() -> None:
    calibrator = Calibrator.fit("platt", np.array([0.2, 0.4, 0.6, 0.8]), np.ones(4, dtype=int))

    out = calibrator.apply(np.array([0.0, 0.5, 1.0]))

    assert np.isfinite([calibrator.a, calibrator.b]).all()
    assert np.all((out >= EPS) & (out <= 1 - EPS))


def test_isotonic_is_monotone_and_beats_the_raw_probabilities_on_held_out_rows() -> None:
    raw, y = _distorted(20_000, a=0.4, b=0.3, seed=1)
    fit, held = slice(0, 10_000), slice(10_000, None)

    calibrator = Calibrator.fit("isotonic", raw[fit], y[fit])

    grid = np.linspace(0.0, 1.0, 2001)
    out = calibrator.apply(grid)
    assert np.all(np.diff(out) >= 0)
    assert np.all(np.diff(calibrator.x) > 0)
    assert np.all(np.diff(calibrator.y) >= 0)
    assert _log_loss(y[held], calibrator.apply(raw[held])) < _log_loss(y[held], raw[held]) - 0.01


def test_isotonic_interpolates_between_knots_and_is_flat_beyond_the_ends() -> None:
    # Sorted raw values with outcomes 0, 1, 0, 1: PAV pools the middle pair to 0.5.
    calibrator = Calibrator.fit("isotonic", np.array([0.2, 0.4, 0.6, 0.8]), np.array([0, 1, 0, 1]))

    assert calibrator.x == (0.2, 0.4, 0.6, 0.8)
    assert calibrator.y == (0.0, 0.5, 0.5, 1.0)
    np.testing.assert_allclose(
        calibrator.apply(np.array([0.0, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0])),
        [EPS, EPS, 0.25, 0.5, 0.75, 1 - EPS, 1 - EPS],
    )


def test_isotonic_pools_tied_raw_probabilities() -> None:
    calibrator = Calibrator.fit("isotonic", np.array([0.3, 0.3, 0.3, 0.7]), np.array([1, 0, 0, 1]))

    assert calibrator.x == (0.3, 0.7)
    assert calibrator.y == pytest.approx((1 / 3, 1.0))


def test_none_is_the_identity() -> None:
    p = np.array([0.0, 0.31, 1.0])

    np.testing.assert_array_equal(Calibrator().apply(p), p)
    assert Calibrator.fit("none", p, np.array([0, 1, 1])) == Calibrator()


def test_auto_picks_none_for_already_calibrated_probabilities_more_often_than_not() -> None:
    chosen = [
        choose_calibrator(*_calibrated(1000, seed=s), mode="auto")[0].method for s in range(60)
    ]

    # In-sample, isotonic always fits best; held out, the raw probabilities usually do.
    assert chosen.count("none") > len(chosen) / 2
    assert chosen.count("isotonic") < len(chosen) / 4


def test_auto_compares_candidates_on_the_held_half_not_in_sample() -> None:
    p, y = _calibrated(800, seed=3)

    calibrator, report = choose_calibrator(p, y, mode="auto")

    first, held = slice(0, 400), slice(400, None)
    for method in ("none", "platt", "isotonic"):
        fitted = Calibrator.fit(method, p[first], y[first])
        expected = _log_loss(y[held], np.clip(fitted.apply(p[held]), 1e-15, 1 - 1e-15))
        assert report.held_log_loss[method] == pytest.approx(expected, rel=1e-12)
    isotonic_in_sample = Calibrator.fit("isotonic", p[first], y[first]).apply(p[first])
    assert _log_loss(y[first], isotonic_in_sample) < _log_loss(y[first], p[first])
    assert report.method == min(report.held_log_loss, key=report.held_log_loss.__getitem__)
    assert (report.fit_rows, report.held_rows, report.rows) == (400, 400, 800)
    # The chosen one is refitted on all the rows.
    assert calibrator == Calibrator.fit(report.method, p, y)
    assert report.method in report.reason


def test_auto_picks_a_calibrator_for_distorted_probabilities() -> None:
    raw, y = _distorted(4000, a=0.4, b=0.2, seed=4)

    calibrator, report = choose_calibrator(raw, y, mode="auto")

    assert calibrator.method in {"platt", "isotonic"}
    assert report.held_log_loss[calibrator.method] < report.held_log_loss["none"]


def test_an_explicit_mode_is_fitted_whatever_the_held_half_prefers() -> None:
    p, y = _calibrated(600, seed=5)

    calibrator, report = choose_calibrator(p, y, mode="isotonic")

    assert calibrator.method == report.method == "isotonic"
    assert report.mode == "isotonic"
    assert set(report.held_log_loss) == {"none", "platt", "isotonic"}


def test_auto_keeps_the_raw_probabilities_when_the_rows_are_too_few_to_compare() -> None:
    p, y = _calibrated(2 * MIN_HALF_ROWS - 1, seed=6)

    calibrator, report = choose_calibrator(p, y, mode="auto")

    assert calibrator.method == "none"
    assert report.held_log_loss == {}
    assert "too few" in report.reason


def test_unknown_mode_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(CalibrationError, match=r"'beta'; allowed: auto, none, platt, isotonic"):
        choose_calibrator(np.array([0.5]), np.array([1]), mode="beta")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["none", "platt", "isotonic"])
def test_calibrator_round_trips_through_json(method: Any) -> None:
    raw, y = _distorted(500, a=0.5, b=0.1, seed=7)
    calibrator = Calibrator.fit(method, raw, y)

    text = json.dumps(calibrator.to_dict(), allow_nan=False)
    loaded = Calibrator.from_dict(json.loads(text))

    assert loaded == calibrator
    np.testing.assert_array_equal(loaded.apply(raw), calibrator.apply(raw))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], r"must be a JSON object, got list"),
        ({"method": "none", "rows": 0}, r"format_version None is not supported"),
        ({"format_version": 1, "method": "beta", "rows": 0}, r"method 'beta'; allowed: none, pla"),
        ({"format_version": 1, "method": "platt", "rows": 5, "a": 1.0}, r"lacks b"),
        ({"format_version": 1, "method": "platt", "rows": 5, "a": "1", "b": 0}, r"a must be a num"),
        ({"format_version": 1, "method": "none", "rows": 0, "a": 2.0}, r"has no field\(s\) a"),
        ({"format_version": 1, "method": "none", "rows": -1}, r"non-negative integer, got -1"),
        (
            {"format_version": 1, "method": "isotonic", "rows": 3, "x": [0.5, 0.2], "y": [0, 1]},
            r"x must be strictly increasing",
        ),
        (
            {"format_version": 1, "method": "isotonic", "rows": 3, "x": [0.2, 0.5], "y": [1, 0]},
            r"y must be non-decreasing",
        ),
        (
            {"format_version": 1, "method": "isotonic", "rows": 3, "x": [0.2], "y": [0.1, 0.2]},
            r"same non-zero length, got 1 and 2",
        ),
        (
            {"format_version": 1, "method": "isotonic", "rows": 3, "x": [0.2, 1.5], "y": [0, 1]},
            r"x must lie within \[0, 1\]",
        ),
    ],
)
def test_from_dict_refuses_bad_input_saying_what_is_wrong(data: object, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Calibrator.from_dict(data)


def test_apply_refuses_values_that_are_not_probabilities() -> None:
    with pytest.raises(CalibrationError, match=r"within \[0, 1\]; got 1 outside, e.g. 1.5"):
        Calibrator().apply(np.array([0.2, 1.5]))


def test_fit_refuses_outcomes_other_than_zero_and_one() -> None:
    with pytest.raises(CalibrationError, match=r"outcomes must be 0 or 1, got values \[0, 2\]"):
        Calibrator.fit("platt", np.array([0.2, 0.4]), np.array([0, 2]))


def test_ece_is_small_for_calibrated_probabilities_and_large_for_distorted_ones() -> None:
    p, y = _calibrated(50_000, seed=8, spread=0.2)
    raw, y_distorted = _distorted(50_000, a=0.3, b=0.0, seed=8)

    assert expected_calibration_error(p, y) < 0.01
    assert expected_calibration_error(raw, y_distorted) > 0.1
    calibrated = Calibrator.fit("platt", raw, y_distorted).apply(raw)
    assert expected_calibration_error(calibrated, y_distorted) < 0.01


def test_reliability_curve_bins_hold_the_rows_their_means_and_rates() -> None:
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    y = np.array([0, 1, 0, 1, 1])

    curve = reliability_curve(p, y, bins=10)

    assert [(b.lower, b.count) for b in curve] == [(0.0, 1), (0.1, 2), (0.9, 2)]
    assert curve[1].mean_predicted == pytest.approx(0.15)
    assert curve[1].observed_rate == 0.5
    assert curve[2].upper == 1.0
    expected = (1 * 0.05 + 2 * 0.35 + 2 * abs(0.975 - 1.0)) / 5
    assert expected_calibration_error(p, y, 10) == pytest.approx(expected)
    with pytest.raises(CalibrationError, match="bins must be a positive integer, got 0"):
        reliability_curve(p, y, bins=0)
