"""Probability calibration: temperature and Platt fits, the rule that keeps a calibrator only when
it helps on held rows, storage (isotonic read, never fitted), the settings, and ECE."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from pipelines.calibration import (
    EPS,
    MAX_TEMPERATURE,
    MIN_HALF_ROWS,
    MODES,
    CalibrationError,
    Calibrator,
    choose_calibrator,
    expected_calibration_error,
    reliability_curve,
)
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.scores import log_losses
from pipelines.settings import Settings


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-t)))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.asarray(np.log(p) - np.log1p(-p))


def _distorted(
    n: int, *, a: float, b: float, seed: int, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Raw probabilities whose true probability is sigmoid(a * logit(raw) + b), and outcomes."""
    rng = np.random.default_rng(seed)
    raw = _sigmoid(rng.normal(0.0, spread, n))
    truth = _sigmoid(a * _logit(raw) + b)
    return raw, (rng.random(n) < truth).astype(np.int8)


def _calibrated(n: int, *, seed: int, spread: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are their own truth (near 0.5, as hourly direction is)."""
    rng = np.random.default_rng(seed)
    p = np.clip(0.5 + rng.normal(0.0, spread, n), 0.02, 0.98)
    return p, (rng.random(n) < p).astype(np.int8)


def test_temperature_recovers_a_known_temperature_either_side_of_one() -> None:
    for true_t in (2.0, 0.5):
        raw, y = _distorted(50_000, a=1.0 / true_t, b=0.0, seed=1)

        calibrator = Calibrator.fit("temperature", raw, y)

        assert calibrator.method == "temperature"
        assert calibrator.rows == 50_000
        assert calibrator.temperature == pytest.approx(true_t, rel=0.05)
    probe = np.array([0.1, 0.5, 0.9])
    expected = _sigmoid(_logit(probe) / calibrator.temperature)
    np.testing.assert_allclose(calibrator.apply(probe), expected, rtol=1e-12)


def test_temperature_minimises_the_log_loss_on_its_rows() -> None:
    raw, y = _distorted(3000, a=0.6, b=0.0, seed=2)
    fitted = Calibrator.fit("temperature", raw, y)

    def loss(t: float) -> float:
        return float(
            log_losses(Calibrator(method="temperature", temperature=t).apply(raw), y).mean()
        )

    best = loss(fitted.temperature)
    assert best < loss(fitted.temperature * 1.01)
    assert best < loss(fitted.temperature / 1.01)


def test_temperature_of_anti_predictive_or_uninformative_rows_stays_finite() -> None:
    raw, y = _distorted(2000, a=-1.0, b=0.0, seed=3)
    assert Calibrator.fit("temperature", raw, y).temperature == MAX_TEMPERATURE
    half = np.full(10, 0.5)
    assert Calibrator.fit("temperature", half, np.arange(10) % 2).temperature == 1.0


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


def test_a_stored_isotonic_calibrator_interpolates_between_knots_and_is_flat_beyond() -> None:
    # Versions registered before the keep rule may hold one: it is applied, never fitted.
    calibrator = Calibrator(method="isotonic", x=(0.2, 0.4, 0.8), y=(0.1, 0.5, 0.7), rows=3)

    out = calibrator.apply(np.array([0.0, 0.3, 0.6, 1.0]))

    np.testing.assert_allclose(out, [0.1, 0.3, 0.6, 0.7])
    with pytest.raises(CalibrationError, match=r"cannot fit a 'isotonic' calibrator; allowed"):
        Calibrator.fit("isotonic", np.array([0.2, 0.4]), np.array([0, 1]))  # type: ignore[arg-type]


def test_none_is_the_identity() -> None:
    p = np.array([0.0, 0.31, 1.0])

    np.testing.assert_array_equal(Calibrator().apply(p), p)
    assert Calibrator.fit("none", p, np.array([0, 1, 1])) == Calibrator()


def test_a_calibrator_that_helps_on_the_held_half_is_kept_and_refitted_on_all_rows() -> None:
    # Overconfident raw probabilities (true T = 4) on as many rows as a training validates on.
    raw, y = _distorted(600, a=0.25, b=0.0, seed=4, spread=2.5)

    calibrator, report = choose_calibrator(raw, y, mode="temperature")

    first, held = slice(0, 300), slice(300, None)
    trial = Calibrator.fit("temperature", raw[first], y[first])
    differences = log_losses(trial.apply(raw[held]), y[held]) - log_losses(raw[held], y[held])
    assert report.held == paired_interval(differences)
    assert report.held.high < 0
    assert report.kept
    assert calibrator.method == report.method == "temperature"
    assert calibrator == Calibrator.fit("temperature", raw, y)
    assert (report.fit_rows, report.held_rows, report.rows, calibrator.rows) == (300, 300, 600, 600)
    assert report.held_log_loss == pytest.approx(
        {
            "raw": log_losses(raw[held], y[held]).mean(),
            "calibrated": (log_losses(trial.apply(raw[held]), y[held]).mean()),
        }
    )
    assert "temperature kept" in report.reason
    assert "wholly below 0" in report.reason


def test_a_calibrator_whose_held_interval_reaches_zero_is_not_kept_even_if_its_mean_is_lower() -> (
    None
):
    # Already calibrated probabilities: a temperature fitted on half of them sometimes lowers the
    # other half's mean loss by chance; only an interval wholly below 0 may keep it.
    found = []
    for seed in range(40):
        p, y = _calibrated(600, seed=seed)
        calibrator, report = choose_calibrator(p, y, mode="temperature")
        assert report.held is not None
        if report.held.mean < 0 <= report.held.high:
            found.append(seed)
            assert not report.kept
            assert calibrator == Calibrator()
            assert report.method == "none"
            assert report.mode == "temperature"
            assert "not kept" in report.reason
    assert found, "no seed gave a lower mean loss with an interval reaching 0"


@pytest.mark.parametrize("mode", ["temperature", "platt"])
def test_calibration_of_calibrated_probabilities_is_rarely_kept(mode: Any) -> None:
    kept = [choose_calibrator(*_calibrated(600, seed=s), mode=mode)[1].kept for s in range(60)]

    # Kept only when the held interval lies wholly below 0: about 2.5 % of the time by chance.
    assert sum(kept) <= 5


def test_none_asked_is_the_identity_without_a_comparison() -> None:
    p, y = _distorted(600, a=0.4, b=0.0, seed=5)

    calibrator, report = choose_calibrator(p, y, mode="none")

    assert calibrator == Calibrator()
    assert (report.mode, report.method, report.kept, report.held) == ("none", "none", False, None)
    assert report.to_dict()["held"] is None


def test_too_few_rows_to_compare_keep_the_raw_probabilities() -> None:
    p, y = _distorted(2 * MIN_HALF_ROWS - 1, a=0.2, b=0.0, seed=6)

    calibrator, report = choose_calibrator(p, y, mode="temperature")

    assert calibrator.method == "none"
    assert not report.kept
    assert report.held is None
    assert "too few" in report.reason


def test_retired_and_unknown_modes_are_refused_naming_the_allowed_ones() -> None:
    assert MODES == ("none", "temperature", "platt")
    for retired in ("auto", "isotonic"):
        with pytest.raises(
            CalibrationError, match=rf"'{retired}' is no longer offered: .*allowed: none, temp"
        ):
            choose_calibrator(np.array([0.5]), np.array([1]), mode=retired)  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match=r"'beta'; allowed: none, temperature, platt"):
        choose_calibrator(np.array([0.5]), np.array([1]), mode="beta")  # type: ignore[arg-type]


def test_settings_default_to_none_and_refuse_auto_with_the_allowed_values() -> None:
    assert Settings(_env_file=None).calibration == "none"
    assert Settings(_env_file=None, ML_CALIBRATION="temperature").calibration == "temperature"
    with pytest.raises(ValueError, match=r"ML_CALIBRATION[\s\S]*'auto' is no longer offered"):
        Settings(_env_file=None, ML_CALIBRATION="auto")


@pytest.mark.parametrize("method", ["none", "temperature", "platt"])
def test_calibrator_round_trips_through_json(method: Any) -> None:
    raw, y = _distorted(500, a=0.5, b=0.1, seed=7)
    calibrator = Calibrator.fit(method, raw, y)

    text = json.dumps(calibrator.to_dict(), allow_nan=False)
    loaded = Calibrator.from_dict(json.loads(text))

    assert loaded == calibrator
    np.testing.assert_array_equal(loaded.apply(raw), calibrator.apply(raw))


def test_a_stored_isotonic_calibrator_round_trips_through_json() -> None:
    calibrator = Calibrator(method="isotonic", x=(0.2, 0.8), y=(0.3, 0.6), rows=40)

    assert Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict()))) == calibrator


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], r"must be a JSON object, got list"),
        ({"method": "none", "rows": 0}, r"format_version None is not supported"),
        (
            {"format_version": 1, "method": "beta", "rows": 0},
            r"method 'beta'; allowed: none, temperature, platt, isotonic",
        ),
        ({"format_version": 1, "method": "platt", "rows": 5, "a": 1.0}, r"lacks b"),
        ({"format_version": 1, "method": "platt", "rows": 5, "a": "1", "b": 0}, r"a must be a num"),
        ({"format_version": 1, "method": "none", "rows": 0, "a": 2.0}, r"has no field\(s\) a"),
        ({"format_version": 1, "method": "none", "rows": -1}, r"non-negative integer, got -1"),
        ({"format_version": 1, "method": "temperature", "rows": 5}, r"lacks temperature"),
        (
            {"format_version": 1, "method": "temperature", "rows": 5, "temperature": 0},
            r"temperature must be a finite positive number, got 0.0",
        ),
        (
            {"format_version": 1, "method": "platt", "rows": 5, "a": 1, "b": 0, "temperature": 2},
            r"has no field\(s\) temperature",
        ),
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
