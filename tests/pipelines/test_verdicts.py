"""The paired moving-block bootstrap and the per-row log loss it compares."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.verdicts import PairedVerdict, log_losses, paired_block_bootstrap


def _ar1(n: int, *, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0]
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    return x


def test_a_clearly_better_series_is_better_and_not_worse() -> None:
    rng = np.random.default_rng(3)
    model = rng.uniform(0.4, 0.6, size=500)
    other = model + 0.2 + rng.normal(0, 0.05, size=500)

    verdict = paired_block_bootstrap(model - other)

    assert verdict.better()
    assert verdict.better(margin=0.1)
    assert not verdict.worse()
    assert verdict.high < 0
    # and the other way round it is the worse one
    assert paired_block_bootstrap(other - model).worse()


def test_identical_series_are_neither_better_nor_worse_and_the_interval_holds_zero() -> None:
    losses = np.random.default_rng(4).uniform(0.3, 0.9, size=300)

    verdict = paired_block_bootstrap(losses - losses)

    assert not verdict.better()
    assert not verdict.worse()
    assert verdict.low <= 0.0 <= verdict.high
    assert verdict.mean == 0.0


def test_noise_around_zero_is_not_called_a_win() -> None:
    verdict = paired_block_bootstrap(np.random.default_rng(5).normal(0, 1, size=400))

    assert verdict.low < 0 < verdict.high
    assert not verdict.better()
    assert not verdict.worse()


def test_the_interval_covers_a_known_mean_of_iid_noise_about_95_percent_of_the_time() -> None:
    true_mean = 0.3
    covered = 0
    trials = 200
    for seed in range(trials):
        x = np.random.default_rng(10_000 + seed).normal(true_mean, 1.0, size=240)
        verdict = paired_block_bootstrap(x, seed=seed)
        covered += verdict.low <= true_mean <= verdict.high

    assert covered / trials >= 0.88


def test_blocks_widen_the_interval_of_an_autocorrelated_series() -> None:
    series = _ar1(1000, phi=0.8, seed=6)

    blocked = paired_block_bootstrap(series, block=24)
    iid = paired_block_bootstrap(series, block=1)

    assert (blocked.high - blocked.low) > 1.5 * (iid.high - iid.low)
    assert blocked.mean == pytest.approx(iid.mean)


def test_the_same_seed_gives_the_same_verdict_and_another_seed_another_interval() -> None:
    d = np.random.default_rng(7).normal(0.1, 1, size=300)

    first = paired_block_bootstrap(d, seed=11)
    again = paired_block_bootstrap(d, seed=11)
    other = paired_block_bootstrap(d, seed=12)

    assert first == again
    assert (other.low, other.high) != (first.low, first.high)


def test_the_verdict_reports_what_it_used() -> None:
    d = np.linspace(-1, 1, 100)

    verdict = paired_block_bootstrap(d, block=10, resamples=500, level=0.9)

    assert verdict.rows == 100
    assert verdict.block == 10
    assert verdict.resamples == 500
    assert verdict.level == 0.9
    assert verdict.low <= verdict.mean <= verdict.high
    assert verdict.to_dict() == {
        "mean": verdict.mean,
        "low": verdict.low,
        "high": verdict.high,
        "rows": 100,
        "block": 10,
    }


def test_a_short_series_shrinks_the_block_to_half_its_length() -> None:
    assert paired_block_bootstrap(np.arange(30.0), block=24).block == 15
    assert paired_block_bootstrap(np.arange(48.0), block=24).block == 24
    single = paired_block_bootstrap(np.array([0.25]), block=24)
    assert single.block == 1
    assert (single.mean, single.low, single.high) == (0.25, 0.25, 0.25)


def test_margins_move_the_threshold() -> None:
    verdict = PairedVerdict(
        mean=0.05, low=0.02, high=0.08, rows=100, block=24, resamples=2000, level=0.95
    )

    assert verdict.worse()
    assert not verdict.worse(margin=0.03)
    assert not verdict.better()
    assert verdict.better(margin=-0.1)


def test_two_thousand_resamples_of_two_thousand_rows_bracket_the_sample_mean() -> None:
    d = np.random.default_rng(8).normal(size=2000)
    verdict = paired_block_bootstrap(d, resamples=2000)
    assert verdict.resamples == 2000
    assert verdict.low < float(np.mean(d)) < verdict.high


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"differences": np.array([])}, "0 rows"),
        ({"differences": np.ones((3, 2))}, "one-dimensional"),
        ({"differences": np.array([0.1, math.nan])}, "row 1"),
        ({"differences": np.ones(10), "block": 0}, "block must be"),
        ({"differences": np.ones(10), "resamples": 0}, "resamples must be"),
        ({"differences": np.ones(10), "level": 1.0}, "level must"),
        ({"differences": np.ones(10), "level": 0.0}, "level must"),
    ],
)
def test_bad_input_is_refused_with_the_bad_value_named(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        paired_block_bootstrap(**kwargs)  # type: ignore[arg-type]


def test_log_losses_are_per_row_and_clipped() -> None:
    losses = log_losses(np.array([0.9, 0.9, 0.5, 1.0, 0.0]), np.array([1, 0, 1, 1, 1]))

    assert losses.shape == (5,)
    assert losses[0] == pytest.approx(-math.log(0.9))
    assert losses[1] == pytest.approx(-math.log(0.1))
    assert losses[2] == pytest.approx(math.log(2))
    assert losses[3] == pytest.approx(-math.log(1 - 1e-7))
    assert losses[4] == pytest.approx(-math.log(1e-7))
    assert np.isfinite(losses).all()


@pytest.mark.parametrize(
    ("p", "y", "message"),
    [
        (np.array([0.5, 0.5]), np.array([1]), "one length"),
        (np.array([0.5, 1.5]), np.array([1, 0]), "row 1 is 1.5"),
        (np.array([0.5, math.nan]), np.array([1, 0]), "row 1"),
        (np.array([0.5, 0.5]), np.array([1, 2]), "y must be 0 or 1: row 1 is 2"),
    ],
)
def test_log_losses_refuse_bad_input(p: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        log_losses(p, y)
