"""The scaler: fitted on training rows only, stored as JSON, tolerant of constant columns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.features.spec import default_spec
from pipelines.features.windows import FeatureScaler, make_windows

Candles = Callable[[str], pd.DataFrame]


def _matrix(full_features: Candles) -> np.ndarray:
    return full_features("XMR").to_numpy()[default_spec().warmup :]


def test_statistics_are_those_of_the_training_slice_only(full_features: Candles) -> None:
    matrix = _matrix(full_features)
    train = matrix[:15_000]
    scaler = FeatureScaler.fit(train, names=default_spec().names)
    np.testing.assert_allclose(scaler.mean, train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.scale, train.std(axis=0), rtol=1e-12)
    assert scaler.rows == 15_000
    # The later rows would have moved the statistics: they were not used.
    assert not np.allclose(scaler.mean, matrix.mean(axis=0), rtol=1e-3)


def test_training_rows_are_standardised(full_features: Candles) -> None:
    train = _matrix(full_features)[:15_000]
    scaler = FeatureScaler.fit(train, names=default_spec().names, clip=None)
    z = scaler.transform(train)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)


def test_extreme_values_are_clipped_to_the_bound(full_features: Candles) -> None:
    matrix = _matrix(full_features)
    scaler = FeatureScaler.fit(matrix, names=default_spec().names)
    unclipped = FeatureScaler.fit(matrix, names=default_spec().names, clip=None)
    assert np.abs(unclipped.transform(matrix)).max() > 10  # XMR's May 2021 crash
    assert np.abs(scaler.transform(matrix)).max() == pytest.approx(10.0)


def test_a_constant_column_is_centred_not_divided_by_zero() -> None:
    matrix = np.column_stack([np.arange(10.0), np.full(10, 3.0)])
    scaler = FeatureScaler.fit(matrix, names=["x", "flat"])
    z = scaler.transform(np.array([[4.5, 3.0], [4.5, 5.0]]))
    assert np.isfinite(z).all()
    assert z[0, 1] == 0.0
    assert z[1, 1] == 2.0
    assert scaler.scale[1] == 1.0


def test_scaler_round_trips_through_json_and_transforms_identically(
    tmp_path: Path, full_features: Candles
) -> None:
    matrix = _matrix(full_features)
    scaler = FeatureScaler.fit(matrix[:5_000], names=default_spec().names)
    path = tmp_path / "scaler.json"
    scaler.save(path)
    loaded = FeatureScaler.load(path)
    assert loaded.names == scaler.names
    assert loaded.clip == scaler.clip
    np.testing.assert_array_equal(loaded.mean, scaler.mean)
    np.testing.assert_array_equal(loaded.scale, scaler.scale)
    np.testing.assert_array_equal(loaded.transform(matrix), scaler.transform(matrix))


def test_windows_can_be_transformed_on_their_last_axis(full_features: Candles) -> None:
    matrix = _matrix(full_features)[:500]
    scaler = FeatureScaler.fit(matrix, names=default_spec().names)
    windows = make_windows(matrix, sequence_length=60)
    # Windows are float32 already, so only float32 rounding separates the two orders.
    np.testing.assert_allclose(
        scaler.transform(windows),
        make_windows(scaler.transform(matrix), sequence_length=60),
        rtol=0,
        atol=1e-5,
    )


def test_fitting_on_warmup_rows_is_refused_naming_the_features(full_features: Candles) -> None:
    with pytest.raises(ValueError, match="drop the warm-up rows") as error:
        FeatureScaler.fit(full_features("XMR").to_numpy()[:500], names=default_spec().names)
    assert "ret_1" in str(error.value)


def test_a_matrix_of_the_wrong_width_is_refused() -> None:
    scaler = FeatureScaler.fit(np.random.default_rng(0).normal(size=(20, 3)), names="abc")
    with pytest.raises(ValueError, match="expected 3 features"):
        scaler.transform(np.zeros((5, 4)))


def test_a_scaler_file_without_statistics_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scaler.json"
    path.write_text('{"names": ["a", "b"], "mean": [0.0, 1.0]}')
    with pytest.raises(ValueError, match="not a feature scaler: lacks scale"):
        FeatureScaler.load(path)
