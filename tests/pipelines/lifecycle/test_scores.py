"""Per-row scores and the up/down/tie rule of an outcome."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.lifecycle.scores import (
    LOG_LOSS_EPS,
    brier_losses,
    decided,
    log_loss,
    log_losses,
    outcome,
    outcomes,
    wilson_interval,
)


def test_an_unchanged_or_unknown_close_is_a_tie_neither_up_nor_down() -> None:
    start = np.array([1.0, 1.0, 1.0, np.nan, 1.0])
    end = np.array([2.0, 0.5, 1.0, 1.0, np.nan])

    found = outcomes(start, end)

    assert found[:2].tolist() == [1.0, 0.0]
    assert np.isnan(found[2:]).all()
    assert decided(found).tolist() == [True, True, False, False, False]
    assert [outcome(1.0, 2.0), outcome(1.0, 0.5), outcome(1.0, 1.0)] == [1, 0, None]


def test_log_loss_is_the_cross_entropy_with_one_clip() -> None:
    p = np.array([0.8, 0.8, 0.0, 1.0])
    y = np.array([1, 0, 0, 0])

    losses = log_losses(p, y)

    assert losses[0] == pytest.approx(-math.log(0.8))
    assert losses[1] == pytest.approx(-math.log(0.2))
    assert losses[2] == pytest.approx(-math.log1p(-LOG_LOSS_EPS))
    assert losses[3] == pytest.approx(-math.log(LOG_LOSS_EPS))  # a confident miss: ~16 nats
    assert log_loss(p, y) == pytest.approx(losses.mean())
    assert brier_losses(p, y).tolist() == pytest.approx([0.04, 0.64, 0.0, 1.0])


@pytest.mark.parametrize("bad", [0.5, np.nan, 2])
def test_scores_refuse_anything_but_0_or_1_outcomes_naming_the_row(bad: float) -> None:
    with pytest.raises(ValueError, match="row 1"):
        log_losses(np.array([0.5, 0.5]), np.array([1, bad]))


def test_probabilities_outside_0_1_are_refused_naming_the_row() -> None:
    with pytest.raises(ValueError, match=r"row 0 is 1\.5"):
        log_losses(np.array([1.5]), np.array([1]))


def test_wilson_interval_matches_the_textbook_value_and_its_edges() -> None:
    # 8 of 10 at 95 %: [0.4902, 0.9433] (Wilson 1927; Newcombe 1998, table I).
    low, high = wilson_interval(8, 10)

    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(8, 10, level=0.99)[0] < low
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(0, 0)
