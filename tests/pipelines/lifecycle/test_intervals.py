"""The paired interval (Newey-West t-interval of a mean difference) and the per-row log loss it
compares, on series whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from pipelines.lifecycle.intervals import (
    PairedVerdict,
    detectable_edge,
    newey_west_lag,
    paired_interval,
    rows_per_day,
)
from pipelines.lifecycle.scores import log_losses


def _ar1(n: int, *, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0]
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    return x


def _by_hand(d: list[float], *, lag: int, level: float) -> tuple[float, float]:
    """The textbook interval, written out: Bartlett-weighted autocovariances, n - 1 df."""
    n = len(d)
    mean = sum(d) / n
    e = [x - mean for x in d]
    variance = sum(x * x for x in e) / n
    for k in range(1, lag + 1):
        weight = 1 - k / (lag + 1)
        variance += 2 * weight * sum(e[i] * e[i - k] for i in range(k, n)) / n
    half = stats.t.ppf(0.5 + level / 2, n - 1) * math.sqrt(variance / (n - 1))
    return mean - half, mean + half


def test_the_interval_is_the_newey_west_t_interval_computed_by_hand() -> None:
    d = list(np.random.default_rng(1).normal(0.02, 0.3, size=150))

    verdict = paired_interval(np.array(d), level=0.9)

    assert verdict.lag == 4
    assert (verdict.low, verdict.high) == pytest.approx(_by_hand(d, lag=4, level=0.9), rel=1e-12)
    assert verdict.mean == pytest.approx(sum(d) / len(d))
    assert verdict.rows == 150
    assert verdict.level == 0.9


@pytest.mark.parametrize(
    ("rows", "lag"), [(1, 0), (2, 1), (100, 4), (168, 4), (500, 5), (2000, 7), (12000, 11)]
)
def test_the_lag_follows_newey_and_wests_rule(rows: int, lag: int) -> None:
    assert newey_west_lag(rows) == lag


def test_a_clearly_better_series_is_better_and_not_worse() -> None:
    rng = np.random.default_rng(3)
    model = rng.uniform(0.4, 0.6, size=500)
    other = model + 0.2 + rng.normal(0, 0.05, size=500)

    verdict = paired_interval(model - other)

    assert verdict.better()
    assert verdict.better(margin=0.1)
    assert not verdict.worse()
    assert verdict.state == "better"
    assert paired_interval(other - model).worse()
    assert paired_interval(other - model).state == "worse"


def test_identical_series_are_neither_better_nor_worse() -> None:
    losses = np.random.default_rng(4).uniform(0.3, 0.9, size=300)

    verdict = paired_interval(losses - losses)

    assert not verdict.better()
    assert not verdict.worse()
    assert verdict.low <= 0.0 <= verdict.high
    assert verdict.mean == 0.0


def test_noise_around_zero_is_not_called_a_win() -> None:
    verdict = paired_interval(np.random.default_rng(5).normal(0, 1, size=400))

    assert verdict.low < 0 < verdict.high
    assert verdict.state == "undecided"


def test_the_95_percent_interval_covers_a_known_mean_about_95_percent_of_the_time() -> None:
    true_mean = 0.3
    trials = 400
    covered = 0
    widths = []
    for seed in range(trials):
        x = np.random.default_rng(10_000 + seed).normal(true_mean, 1.0, size=240)
        verdict = paired_interval(x)
        covered += verdict.low <= true_mean <= verdict.high
        widths.append(verdict.high - verdict.low)

    assert 0.92 <= covered / trials <= 0.98
    # and it is no wider than it must be: 2 t(0.975, 239) / sqrt(240) for unit noise, within 10 %
    assert np.median(widths) == pytest.approx(2 * 1.97 / math.sqrt(240), rel=0.1)


def test_dependence_between_neighbouring_rows_widens_the_interval() -> None:
    series = _ar1(1000, phi=0.8, seed=6)

    verdict = paired_interval(series)
    independent = stats.t.ppf(0.975, 999) * series.std() / math.sqrt(999)

    assert (verdict.high - verdict.low) > 1.5 * 2 * independent


def test_a_wider_level_gives_a_wider_interval() -> None:
    d = np.random.default_rng(7).normal(0.1, 1, size=300)

    narrow, wide = paired_interval(d, level=0.5), paired_interval(d, level=0.99)

    assert wide.low < narrow.low < narrow.high < wide.high
    assert narrow.mean == wide.mean


def test_one_row_tells_nothing() -> None:
    single = paired_interval(np.array([0.25]))

    assert single.mean == 0.25
    assert (single.low, single.high) == (-math.inf, math.inf)
    assert single.state == "undecided"


def test_margins_move_the_threshold() -> None:
    verdict = PairedVerdict(mean=0.05, low=0.02, high=0.08, rows=100, lag=4, se=0.015)

    assert verdict.worse()
    assert not verdict.worse(margin=0.03)
    assert not verdict.better()
    assert verdict.better(margin=-0.1)


def test_the_verdict_reports_what_it_used_and_the_edge_it_can_detect() -> None:
    d = np.linspace(-1, 1, 100)

    verdict = paired_interval(d, level=0.9)

    assert verdict.to_dict() == {
        "mean": verdict.mean,
        "low": verdict.low,
        "high": verdict.high,
        "rows": 100,
        "lag": 4,
        "se": verdict.se,
        "level": 0.9,
        "method": "newey-west",
    }
    assert "100 rows, lag 4" in verdict.words()
    # z(0.95) + z(0.8) standard errors at the 90 % level, 80 % power.
    assert verdict.detectable_edge() == pytest.approx((1.6449 + 0.8416) * verdict.se, rel=1e-4)
    assert detectable_edge(0.001) == pytest.approx((1.9600 + 0.8416) * 0.001, rel=1e-4)


@pytest.mark.parametrize(("timeframe", "rows"), [("1h", 24), ("15m", 96), ("4h", 6), ("1d", 1)])
def test_a_day_of_rows_follows_the_timeframe(timeframe: str, rows: int) -> None:
    assert rows_per_day(timeframe) == rows


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"differences": np.array([])}, "0 rows"),
        ({"differences": np.ones((3, 2))}, "one-dimensional"),
        ({"differences": np.array([0.1, math.nan])}, "row 1"),
        ({"differences": np.ones(10), "level": 1.0}, "level must"),
        ({"differences": np.ones(10), "level": 0.0}, "level must"),
    ],
)
def test_bad_input_is_refused_with_the_bad_value_named(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        paired_interval(**kwargs)  # type: ignore[arg-type]


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
        (np.array([0.5, 0.5]), np.array([1, 2]), "row 1 is 2"),
        (np.array([0.5, 0.5]), np.array([1.0, math.nan]), "ties are dropped"),
    ],
)
def test_log_losses_refuse_bad_input(p: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        log_losses(p, y)
