"""The drift test: a one-sided CUSUM on standardised per-row differences, causal, restarting
after each alarm; rare false alarms on resampled real null differences, alarms on a shift."""

from __future__ import annotations

import numpy as np
import pytest

from bench.drift_alarms import measure, null_differences, resample
from pipelines.candles.store import CandleStore
from pipelines.lifecycle.drift import BASELINE, DriftRule, cusum, drift_state, standardised
from tests.conftest import BUNDLED


@pytest.fixture(scope="module")
def btc_null() -> np.ndarray:
    store = CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED.parent / "none")
    return null_differences(store, "BTC")


def test_the_one_baseline_is_the_base_rate() -> None:
    assert BASELINE == "base_rate"


def test_cusum_accumulates_excess_over_the_reference_and_restarts_after_an_alarm() -> None:
    z = np.array([1.0, 1.0, -5.0, 2.0, 2.0, 2.0, 0.5, 3.0])
    path, alarm = cusum(z, reference=0.5, threshold=2.0)
    # 0.5, 1.0, 0 (floored), 1.5, 3.0 > 2: alarm and restart, 1.5, 1.5, 4.0 > 2: alarm
    np.testing.assert_allclose(path, [0.5, 1.0, 0.0, 1.5, 0.0, 1.5, 1.5, 0.0])
    assert np.flatnonzero(alarm).tolist() == [4, 7]
    # Columns are independent series: the same answer per column.
    _, both = cusum(np.stack([z, -np.abs(z)], axis=1), reference=0.5, threshold=2.0)
    assert np.flatnonzero(both[:, 0]).tolist() == [4, 7]
    assert not both[:, 1].any()  # one-sided: a better version never alarms


def test_standardising_is_causal_so_a_longer_series_keeps_every_earlier_row() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(0, 0.1, 500)
    short = standardised(d[:300], warmup=50)
    longer = standardised(d, warmup=50)
    np.testing.assert_array_equal(short, longer[:300])
    assert not short[:50].any()  # the warm-up only estimates the scale
    assert longer[300] == pytest.approx(np.clip(d[300] / d[:300].std(), -4, 4))
    # So a state on more rows extends, never rewrites, the alarms it had.
    shifted = d + 0.2
    rule = DriftRule(reference=0.05, threshold=5.0, warmup=50)
    first = drift_state(shifted[:300], rule)
    assert first.alarms
    assert drift_state(shifted, rule).alarms[: len(first.alarms)] == first.alarms


def test_a_version_clearly_worse_than_the_baseline_alarms_and_one_as_good_does_not(
    btc_null: np.ndarray,
) -> None:
    rule = DriftRule()
    rng = np.random.default_rng(1)
    null = resample(btc_null, rows=rule.warmup + 2000, streams=1, rng=rng)[:, 0]
    worse = null.copy()
    worse[rule.warmup :] += 0.05  # the version loses 0.05 nats a row against the base rate

    clean = drift_state(null, rule)
    drifting = drift_state(worse, rule)

    assert not clean.drifting
    assert drifting.drifting
    assert rule.warmup < drifting.alarms[0] < rule.warmup + 600
    assert drifting.mean == pytest.approx(float(worse.mean()))


def test_false_alarms_on_resampled_real_null_differences_are_rare(btc_null: np.ndarray) -> None:
    # A fast version of `python -m bench.drift_alarms` (which states 0.06 per 10,000 rows for
    # BTC with 200 streams): a looser band, fewer streams.
    measured = measure("BTC", btc_null, rule=DriftRule(), rows=5000, streams=40, shifts=(0.02,))
    assert measured.false_alarms <= 1.0  # per 10,000 rows
    assert measured.detected[0.02] >= 0.9
    assert measured.delays[0.02] < 1500
    # The threshold is what keeps them rare: a tenth of it alarms often on the same streams.
    loose = measure(
        "BTC", btc_null, rule=DriftRule(threshold=6.0), rows=5000, streams=40, shifts=()
    )
    assert loose.false_alarms > 5 * max(measured.false_alarms, 1.0)


def test_a_rule_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="threshold"):
        DriftRule(threshold=0)
    with pytest.raises(ValueError, match="warmup"):
        DriftRule(warmup=1)
    with pytest.raises(ValueError, match="finite"):
        drift_state(np.array([0.1, np.nan]))
