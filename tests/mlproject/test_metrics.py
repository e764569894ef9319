"""Classification metrics and intervals on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlproject.metrics import (
    INTERVAL_METRICS,
    best_of,
    classification_metrics,
    is_better,
    metric_intervals,
    roc_auc,
)
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.scores import LOG_LOSS_EPS, log_losses

Y = np.array([1, 0, 1, 1, 0])
P = np.array([0.9, 0.2, 0.4, 0.6, 0.7])


def test_metrics_match_hand_computed_values() -> None:
    m = classification_metrics(y_true=Y, proba=P)

    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Positive/negative pairs ranked right: (.9>.2), (.9>.7), (.4>.2), (.6>.2) of 6.
    assert m["roc_auc"] == pytest.approx(4 / 6)
    expected_log_loss = (
        -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.6) + math.log(0.3)) / 5
    )
    assert m["log_loss"] == pytest.approx(expected_log_loss)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.16 + 0.49) / 5)


def test_hard_predictions_override_the_threshold() -> None:
    m = classification_metrics(y_true=Y, proba=np.full(5, 0.5), pred=np.array([1, 0, 1, 1, 0]))
    assert m["accuracy"] == 1.0
    assert m["roc_auc"] == 0.5
    assert m["log_loss"] == pytest.approx(math.log(2))


def test_auc_is_undefined_with_one_class() -> None:
    assert math.isnan(roc_auc(np.ones(4, dtype=np.int8), np.array([0.1, 0.2, 0.3, 0.4])))


def test_labels_other_than_zero_and_one_are_refused() -> None:
    with pytest.raises(ValueError, match="must be 0 or 1"):
        classification_metrics(y_true=np.array([0, 2]), proba=np.array([0.1, 0.2]))


def test_log_loss_is_the_lifecycles_with_its_clip() -> None:
    # A certain miss costs -log(LOG_LOSS_EPS), ~16 nats, as everywhere else in the project.
    m = classification_metrics(y_true=np.array([1, 0]), proba=np.array([0.0, 0.0]))
    assert m["log_loss"] == pytest.approx(-math.log(LOG_LOSS_EPS) / 2)


def test_accuracy_interval_is_wilsons_of_the_hits() -> None:
    y = np.array([1] * 52 + [0] * 48)
    proba = np.full(100, 0.9)  # says up on every row: 52 hits in 100

    low, high = metric_intervals(y_true=y, proba=proba)["accuracy"]

    assert low == pytest.approx(0.4231, abs=1e-4)
    assert high == pytest.approx(0.6153, abs=1e-4)


def test_log_loss_interval_is_the_newey_west_interval_of_the_per_row_losses() -> None:
    rng = np.random.default_rng(11)
    # Runs of 12 rows alike: neighbouring losses are dependent, as on a volatile day.
    y = np.repeat(rng.integers(0, 2, 50), 12).astype(np.int8)
    proba = np.repeat(rng.uniform(0.2, 0.8, 50), 12)
    losses = log_losses(proba, y)

    low, high = metric_intervals(y_true=y, proba=proba)["log_loss"]

    expected = paired_interval(losses)
    assert (low, high) == (expected.low, expected.high)
    assert low < losses.mean() < high
    # Wider than an interval that takes the rows as independent.
    half = 1.96 * losses.std(ddof=1) / math.sqrt(losses.size)
    assert high - low > 1.5 * 2 * half


def test_intervals_are_given_for_accuracy_and_log_loss_only() -> None:
    intervals = metric_intervals(y_true=Y, proba=P)
    assert tuple(intervals) == INTERVAL_METRICS == ("accuracy", "log_loss")


@pytest.mark.parametrize(
    ("metric", "candidate", "reference", "margin", "expected"),
    [
        ("log_loss", 0.69, 0.70, 0.0, True),
        ("log_loss", 0.70, 0.70, 0.0, True),
        ("log_loss", 0.69, 0.70, 0.02, False),
        ("log_loss", 0.71, 0.70, 0.0, False),
        ("roc_auc", 0.55, 0.55, 0.0, True),
        ("roc_auc", 0.54, 0.55, 0.0, False),
        ("roc_auc", 0.54, 0.55, -0.02, True),
    ],
)
def test_is_better_respects_direction_and_margin(
    metric: str, candidate: float, reference: float, margin: float, expected: bool
) -> None:
    assert is_better(metric, candidate, reference, margin=margin) is expected


def test_best_of_picks_lowest_loss_and_highest_auc() -> None:
    assert best_of("log_loss", {"a": 0.7, "b": 0.69, "c": math.nan}) == "b"
    assert best_of("roc_auc", {"a": 0.51, "b": 0.49}) == "a"
