"""The magnitude head: labels, its baselines' causality, the HAR inside a window, `magnitude.json`
(the older kind included) and the bundle's `move_proba`, on hand-made closes and windows and a
real ONNX bundle."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.candles.store import CandleStore
from pipelines.features.compute import latest_features
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.magnitude import (
    MagnitudeError,
    MagnitudeHead,
    Persistence,
    base_rate,
    har_features,
    last_cleared,
    move_labels,
    round_trip_threshold,
    window_har,
)
from pipelines.modelbundle import MAGNITUDE_FILE, BundleError, ModelBundle
from pipelines.pyfunc_model import exact_candles, example_candles, predict_newest
from tests.conftest import BUNDLED
from tests.pipelines.test_modelbundle import LENGTH, _mean_sigmoid_onnx

NAN = math.nan


def _equal(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_array_equal(actual, np.array(expected, dtype=np.float64))


def test_a_move_clears_only_when_strictly_beyond_the_threshold_and_a_tie_clears_nothing() -> None:
    # moves: +0.1 %, unchanged (a tie), +0.2997 %, -0.398 %, +1 %, then unknown
    close = np.array([100.0, 100.1, 100.1, 100.4, 100.0, 101.0])

    _equal(move_labels(close, horizon=1, threshold=0.002), [0, 0, 1, 1, 1, NAN])
    # two candles ahead: +0.1 %, +0.2997 %, -0.0999 %, +0.598 %, then two unknown
    _equal(move_labels(close, horizon=2, threshold=0.002), [0, 1, 0, 1, NAN, NAN])
    # exactly at the threshold (0.5 is exact in binary) does not clear; just beyond does
    _equal(move_labels(np.array([1.0, 1.5, 0.74]), horizon=1, threshold=0.5), [0, 1, NAN])


def test_a_per_row_threshold_labels_each_row_and_an_unknown_one_gives_no_label() -> None:
    close = np.array([100.0, 101.0, 102.0, 100.0])
    threshold = np.array([0.02, 0.005, NAN, 0.0])

    _equal(move_labels(close, horizon=1, threshold=threshold), [0, 1, NAN, NAN])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": 0, "threshold": 0.002}, "horizon must be an integer >= 1, got 0"),
        ({"horizon": 1, "threshold": -0.001}, "threshold must be a finite number >= 0, got -0.001"),
        ({"horizon": 1, "threshold": np.zeros(2)}, r"one value per close: \(2,\) for \(4,\)"),
    ],
)
def test_bad_label_arguments_are_refused_naming_the_value(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(MagnitudeError, match=message):
        move_labels(np.array([1.0, 2.0, 3.0, 4.0]), **kwargs)


def test_round_trip_threshold_is_twice_the_fee_and_refuses_a_negative_one() -> None:
    assert round_trip_threshold(0.001) == 0.002
    with pytest.raises(MagnitudeError, match=r"got -0\.1"):
        round_trip_threshold(-0.1)


def test_base_rate_counts_only_labels_known_at_each_row_with_one_clear_and_one_miss_added() -> None:
    labels = np.array([1.0, 0.0, 1.0, 1.0, NAN])

    # t=0 knows nothing; t=1 knows label 0; t=2 labels 0-1; t=3 labels 1-2; t=4 labels 2-3.
    np.testing.assert_allclose(
        base_rate(labels, horizon=1, window=2), [1 / 2, 2 / 3, 2 / 4, 2 / 4, 3 / 4]
    )
    # two ahead: row t knows the labels up to t - 2.
    np.testing.assert_allclose(
        base_rate(labels, horizon=2, window=720), [1 / 2, 1 / 2, 2 / 3, 2 / 4, 3 / 5]
    )


def test_persistence_rates_come_from_the_training_rows_given_the_last_move() -> None:
    labels = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, NAN])
    _equal(last_cleared(labels, horizon=1), [NAN, 1, 1, 1, 0, 0, 1, 0])

    fitted = Persistence.fit(labels, np.arange(1, 5), horizon=1)

    # rows 1-4: after a clear 1, 1, 0 (rows 1, 2, 3); after a miss 0 (row 4)
    assert fitted.after_clear == pytest.approx((2 + 1) / (3 + 2))
    assert fitted.after_miss == pytest.approx((0 + 1) / (1 + 2))
    assert fitted.overall == pytest.approx((2 + 1) / (4 + 2))
    np.testing.assert_allclose(
        fitted.proba(labels, np.array([0, 5, 6, 7]), horizon=1),
        [fitted.overall, fitted.after_miss, fitted.after_clear, fitted.after_miss],
    )


def test_har_features_are_logs_of_mean_absolute_returns_over_the_spans() -> None:
    close = np.array([100.0, 101.0, 101.0, 99.99, 100.0])
    r = np.abs(np.diff(close) / close[:-1])  # 0.01, 0 (floored alone), 0.01, 0.0001

    features = har_features(close, spans=(1, 3))

    expected = [
        [NAN, NAN],
        [math.log(r[0]), math.log(r[0])],
        [math.log(1e-5), math.log(r[:2].mean())],
        [math.log(r[2]), math.log(r[:3].mean())],
        [math.log(r[3]), math.log(r[1:4].mean())],
    ]
    np.testing.assert_allclose(features, expected, rtol=1e-12)


def test_the_baselines_read_no_close_after_their_row() -> None:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, 2000)))
    later = close.copy()
    later[1500:] *= np.exp(rng.normal(0, 0.01, 500))  # every close from row 1500 on changes
    train = np.arange(0, 1000)

    for horizon in (1, 3):
        before, after = (move_labels(c, horizon=horizon, threshold=0.002) for c in (close, later))
        assert not np.array_equal(before[1400:], after[1400:], equal_nan=True)
        rows = np.arange(1000, 1500)  # rows before the change
        np.testing.assert_array_equal(
            base_rate(before, horizon=horizon)[:1500], base_rate(after, horizon=horizon)[:1500]
        )
        fitted = Persistence.fit(before, train, horizon=horizon)
        np.testing.assert_array_equal(
            fitted.proba(before, rows, horizon=horizon), fitted.proba(after, rows, horizon=horizon)
        )
    np.testing.assert_array_equal(har_features(close)[:1500], har_features(later)[:1500])
    assert not np.array_equal(har_features(close)[1500:], har_features(later)[1500:])


def test_window_har_is_the_log_of_the_mean_absolute_value_over_each_span() -> None:
    # two windows of four steps, two columns; the second column holds a zero step
    values = np.array(
        [
            [[0.01, 0.0], [-0.03, 0.0], [0.02, 0.0], [-0.04, 0.0]],
            [[0.002, 1.0], [0.0, -2.0], [-0.006, 3.0], [0.0, 0.5]],
        ]
    )

    har = window_har(values, spans=(1, 2, 4))

    expected = np.log(
        [
            [0.04, 0.03, 0.025, 1e-5, 1e-5, 1e-5],  # a column of zeros: floored
            [1e-5, 0.003, 0.002, 0.5, 1.75, 1.625],  # the last step unchanged: floored
        ]
    )
    np.testing.assert_allclose(har, expected, rtol=1e-12)
    with pytest.raises(MagnitudeError, match=r"a span of 5 steps needs windows that long"):
        window_har(values, spans=(1, 5))
    with pytest.raises(MagnitudeError, match=r"spans must increase, got \(4, 2\)"):
        window_har(values, spans=(4, 2))


NAMES = ("a", "b", "c")


def _head(names: tuple[str, ...] = NAMES, *, seed: int = 0, **change: Any) -> MagnitudeHead:
    """A head reading the scaled last step of the first name and the window HAR of the last
    two over spans 1 and 3."""
    rng = np.random.default_rng(seed)
    fields: dict[str, Any] = {
        "names": names,
        "last_step": names[:1],
        "window": names[-2:],
        "spans": (1, 3),
        "center": rng.normal(-4.0, 1.0, 4),
        "scale": rng.uniform(0.5, 2.0, 4),
        "coef": rng.normal(0, 0.5, 5),
        "intercept": -0.2,
        "threshold": 0.002,
        "horizon": 1,
    }
    return MagnitudeHead(**{**fields, **change})


def _by_hand(head: MagnitudeHead, windows: np.ndarray, scaled_last: np.ndarray) -> np.ndarray:
    """The head's formula, one input at a time."""
    index = {name: k for k, name in enumerate(head.names)}
    inputs = [scaled_last[:, index[name]] for name in head.last_step]
    for name in head.window:
        for span in head.spans:
            mean = np.abs(windows[:, -span:, index[name]]).mean(axis=1)
            inputs.append(np.log(np.maximum(mean, 1e-5)))
    x = np.stack(inputs, axis=1)
    n_last = len(head.last_step)
    x[:, n_last:] = (x[:, n_last:] - head.center) / head.scale
    return 1 / (1 + np.exp(-(x @ head.coef + head.intercept)))


def test_a_head_reads_the_scaled_last_step_and_the_window_har_of_its_raw_windows() -> None:
    rng = np.random.default_rng(1)
    windows = rng.normal(0, 0.01, size=(6, 4, 3))
    scaled_last = rng.normal(size=(6, 3))
    head = _head()

    moves = head.proba(windows, scaled_last)

    np.testing.assert_allclose(moves, _by_hand(head, windows, scaled_last), rtol=1e-12)
    assert len(np.unique(np.round(moves, 6))) == len(moves)  # they differ per window
    assert head.input_names == ("a", "b@1", "b@3", "c@1", "c@3")
    assert head.window_length == 3
    # The first step lies beyond the longest span, and the unread feature counts nowhere.
    unread = windows.copy()
    unread[:, 0, :] = 9.0
    unread[:, :, 0] = 9.0
    np.testing.assert_array_equal(head.proba(unread, scaled_last), moves)
    nearer = windows.copy()
    nearer[:, 1, 2] *= 3
    assert not np.array_equal(head.proba(nearer, scaled_last), moves)


def test_a_head_survives_json_and_predicts_the_same() -> None:
    head = _head()
    rng = np.random.default_rng(1)
    windows, scaled_last = rng.normal(0, 0.01, size=(6, 3, 3)), rng.normal(size=(6, 3))

    again = MagnitudeHead.from_dict(json.loads(json.dumps(head.to_dict())))

    assert again.to_dict() == head.to_dict()
    assert again.to_dict()["kind"] == "magnitude-window-har"
    np.testing.assert_array_equal(
        again.proba(windows, scaled_last), head.proba(windows, scaled_last)
    )


def test_an_older_head_loads_as_one_on_the_scaled_last_step_of_every_feature() -> None:
    legacy = {
        "kind": "magnitude-logistic",
        "names": list(NAMES),
        "coef": [0.4, -0.3, 0.2],
        "intercept": -0.2,
        "threshold": 0.002,
        "horizon": 1,
    }
    rng = np.random.default_rng(2)
    windows, scaled_last = rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 3))

    head = MagnitudeHead.from_dict(legacy)

    assert head.last_step == NAMES
    assert (head.window, head.spans, head.window_length) == ((), (), 1)
    expected = 1 / (1 + np.exp(-(scaled_last @ np.array([0.4, -0.3, 0.2]) - 0.2)))
    np.testing.assert_allclose(head.proba(windows, scaled_last), expected, rtol=1e-12)
    assert MagnitudeHead.from_dict(head.to_dict()).to_dict() == head.to_dict()
    with pytest.raises(MagnitudeError, match=r"a 'magnitude-logistic' head has the keys .*unknown"):
        MagnitudeHead.from_dict({**legacy, "window": []})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "logistic"}, "unknown magnitude head kind 'logistic': expected"),
        ({"horizon": 1.5}, "'horizon' must be an integer, got 1.5"),
        ({"horizon": True}, "'horizon' must be an integer, got True"),
        ({"horizon": 0}, "horizon must be an integer >= 1, got 0"),
        ({"threshold": -0.002}, "threshold must be a finite number >= 0, got -0.002"),
        ({"threshold": "0.002"}, "'threshold' must hold numbers, got '0.002'"),
        ({"coef": [1.0, "x", 2.0, 0.0, 0.0]}, "'coef' must hold numbers, got 'x'"),
        ({"coef": [1.0, 2.0]}, "has 2 coefficients for 1 last-step features and 4 window"),
        ({"coef": [1.0, 0.0, NAN, 0.0, 0.0]}, "that of 'b@3' is nan"),
        ({"names": ["a", 2, "c"]}, r"'names' must be a list of feature names, got \['a', 2"),
        ({"window": ["b", "d"]}, "window names 'd', not one of the features"),
        ({"last_step": ["a", "a"]}, r"last_step names a feature twice: \['a', 'a'\]"),
        ({"spans": [3, 1]}, r"spans must increase, got \(3, 1\)"),
        ({"spans": [1.0, 3]}, r"'spans' must be a list of integers, got \[1.0, 3\]"),
        ({"window": []}, "window features need spans and spans window features"),
        ({"scale": [1.0, 1.0, 0.0, 1.0]}, "scales finite and positive"),
        ({"center": [0.0]}, "need 4 centers and scales, got 1 and 4"),
        ({"intercept": None}, "'intercept' must hold numbers, got None"),
        ({"extra": 1}, "unknown extra"),
    ],
)
def test_a_malformed_head_is_refused_naming_the_value(change: dict[str, Any], message: str) -> None:
    data = {**_head().to_dict(), **change}

    with pytest.raises(MagnitudeError, match=message):
        MagnitudeHead.from_dict(data)


def test_a_head_missing_a_key_or_not_an_object_is_refused() -> None:
    data = _head().to_dict()
    del data["spans"]

    with pytest.raises(MagnitudeError, match="missing spans"):
        MagnitudeHead.from_dict(data)
    with pytest.raises(MagnitudeError, match="expected a JSON object, got list"):
        MagnitudeHead.from_dict([])


def test_windows_too_short_or_of_the_wrong_width_are_refused() -> None:
    head = _head()
    with pytest.raises(
        MagnitudeError, match=r"expected raw windows of shape \(n, >= 3, 3\), got \(2, 2, 3\)"
    ):
        head.proba(np.zeros((2, 2, 3)), np.zeros((2, 3)))
    with pytest.raises(
        MagnitudeError, match=r"expected raw windows of shape \(n, >= 3, 3\), got \(2, 3, 4\)"
    ):
        head.proba(np.zeros((2, 3, 4)), np.zeros((2, 4)))
    with pytest.raises(
        MagnitudeError, match=r"expected scaled last steps of shape \(2, 3\), got \(1, 3\)"
    ):
        head.proba(np.zeros((2, 3, 3)), np.zeros((1, 3)))


@pytest.fixture
def bundle(tmp_path: Path) -> ModelBundle:
    spec = default_spec()
    rng = np.random.default_rng(0)
    scaler = FeatureScaler.fit(rng.normal(3.0, 2.0, size=(300, len(spec.names))), names=spec.names)
    metadata = {
        "pair": "BTC",
        "model_type": "lstm",
        "sequence_length": LENGTH,
        "horizon": 1,
        "beats_baseline": True,
        "buy_threshold": 0.5,
        "sell_threshold": 0.4,
    }
    return ModelBundle(
        onnx_path=_mean_sigmoid_onnx(tmp_path / "source.onnx", len(spec.names)),
        scaler=scaler,
        spec=spec,
        metadata=metadata,
        magnitude=_head(
            spec.names,
            last_step=("hour_sin", "rv_5"),
            window=("ret_1", "hl_range"),
            spans=(1, 2, LENGTH),
            center=np.full(6, -4.0),
            scale=np.full(6, 1.5),
            coef=np.array([0.3, -0.2, 0.4, 0.1, 0.3, -0.2, 0.2, 0.1]),
        ),
    )


def test_a_bundle_saves_and_loads_its_magnitude_head(bundle: ModelBundle, tmp_path: Path) -> None:
    directory = bundle.save(tmp_path / "bundle")

    loaded = ModelBundle.load(directory)

    assert (directory / MAGNITUDE_FILE).is_file()
    assert loaded.magnitude is not None
    assert bundle.magnitude is not None
    assert loaded.magnitude.to_dict() == bundle.magnitude.to_dict()


def test_a_bundle_without_magnitude_json_loads_without_a_head_and_moves_none(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    directory = dataclasses.replace(bundle, magnitude=None).save(tmp_path / "bundle")

    loaded = ModelBundle.load(directory)

    assert not (directory / MAGNITUDE_FILE).exists()
    assert loaded.magnitude is None
    assert loaded.move_proba(np.zeros((2, LENGTH, len(bundle.spec.names)))) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"magnitude\.json is invalid: Expecting property name"),
        (
            '{"kind": "magnitude-window-har"}',
            r"magnitude\.json is invalid: a 'magnitude-window-har' head has the keys .*",
        ),
        ('{"kind": "magnitude-lasso"}', r"unknown magnitude head kind 'magnitude-lasso'"),
    ],
)
def test_a_malformed_magnitude_file_is_a_bundle_error_naming_it(
    bundle: ModelBundle, tmp_path: Path, text: str, message: str
) -> None:
    directory = bundle.save(tmp_path / "bundle")
    (directory / MAGNITUDE_FILE).write_text(text)

    with pytest.raises(BundleError, match=message):
        ModelBundle.load(directory)


def test_a_head_of_other_features_or_another_horizon_is_refused(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    directory = bundle.save(tmp_path / "bundle")
    assert bundle.magnitude is not None
    data = bundle.magnitude.to_dict()
    names = list(reversed(data["names"]))
    (directory / MAGNITUDE_FILE).write_text(json.dumps({**data, "names": names}))
    with pytest.raises(BundleError, match=r"features of magnitude\.json differ from the spec's"):
        ModelBundle.load(directory)

    (directory / MAGNITUDE_FILE).write_text(json.dumps({**data, "horizon": 4}))
    with pytest.raises(BundleError, match="forecasts 4 candles ahead, the bundle's horizon is 1"):
        ModelBundle.load(directory)


def test_move_proba_reads_the_raw_windows_and_their_last_step_scaled(bundle: ModelBundle) -> None:
    rng = np.random.default_rng(5)
    windows = rng.normal(3.0, 2.0, size=(8, LENGTH, len(bundle.spec.names)))
    head, scaler = bundle.magnitude, bundle.scaler
    assert head is not None

    z = np.clip((windows[:, -1, :] - scaler.mean) / scaler.scale, -10, 10)
    expected = _by_hand(head, windows, z)

    moves = bundle.move_proba(windows)
    assert moves is not None
    np.testing.assert_allclose(moves, expected, rtol=1e-5)
    assert len(np.unique(np.round(expected, 6))) == len(expected)  # they differ per window
    # The whole window counts, not only its last step.
    earlier = windows.copy()
    earlier[:, 0, :] *= 5.0
    changed = bundle.move_proba(earlier)
    assert changed is not None
    assert not np.array_equal(changed, moves)
    with pytest.raises(BundleError, match=rf"expected windows of shape \(n, {LENGTH}, "):
        bundle.move_proba(windows[:, 1:, :])


def test_a_bundle_with_an_older_head_loads_and_moves_on_the_scaled_last_step(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    directory = bundle.save(tmp_path / "bundle")
    coef = np.random.default_rng(6).normal(0, 0.3, len(bundle.spec.names))
    legacy = {
        "kind": "magnitude-logistic",
        "names": list(bundle.spec.names),
        "coef": coef.tolist(),
        "intercept": -0.2,
        "threshold": 0.002,
        "horizon": 1,
    }
    (directory / MAGNITUDE_FILE).write_text(json.dumps(legacy))
    windows = np.random.default_rng(7).normal(3.0, 2.0, size=(4, LENGTH, len(bundle.spec.names)))

    loaded = ModelBundle.load(directory)

    z = np.clip((windows[:, -1, :] - loaded.scaler.mean) / loaded.scaler.scale, -10, 10)
    expected = 1 / (1 + np.exp(-(z @ coef - 0.2)))
    moves = loaded.move_proba(windows)
    assert moves is not None
    np.testing.assert_allclose(moves, expected, rtol=1e-5)
    earlier = windows.copy()
    earlier[:, :-1, :] = 0.0  # such a head reads the last step only
    np.testing.assert_array_equal(loaded.move_proba(earlier), moves)


def test_a_head_reading_more_steps_than_the_bundles_windows_is_refused(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    assert bundle.magnitude is not None
    longer = dataclasses.replace(bundle.magnitude, spans=(1, 2, LENGTH + 1))
    directory = dataclasses.replace(bundle, magnitude=longer).save(tmp_path / "bundle")

    with pytest.raises(
        BundleError, match=rf"reads {LENGTH + 1} steps of each window, .* hold {LENGTH}"
    ):
        ModelBundle.load(directory)


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED / "none").load("BTC")


def test_the_pyfunc_answers_the_newest_windows_move_and_nan_without_a_head(
    bundle: ModelBundle, candles: pd.DataFrame, tmp_path: Path
) -> None:
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    frame = example_candles(candles, rows=exact_candles(loaded))
    rows = latest_features(candles, rows=LENGTH, spec=loaded.spec).to_numpy()
    expected = loaded.move_proba(rows[np.newaxis])
    assert expected is not None

    answer = predict_newest(loaded, frame).iloc[0]
    bare = predict_newest(dataclasses.replace(loaded, magnitude=None), frame).iloc[0]

    assert answer["move"] == pytest.approx(float(expected[0]), abs=1e-12)
    assert 0.0 < answer["move"] < 1.0
    assert math.isnan(bare["move"])
    assert bare["probability"] == answer["probability"]
