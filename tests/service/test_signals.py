"""From a probability of "up" to the original's prediction object."""

from __future__ import annotations

import pytest

from pipelines.signals import describe_probability
from service.signals import neutral_prediction


@pytest.mark.parametrize(
    ("p", "direction", "signal", "confidence"),
    [
        (0.74, "up", "BUY", 0.74),
        (0.6, "up", "BUY", 0.6),
        (0.55, "up", "HOLD", 0.55),
        (0.5, "up", "HOLD", 0.5),
        (0.45, "down", "HOLD", 0.55),
        (0.4, "down", "SELL", 0.6),
        (0.1, "down", "SELL", 0.9),
    ],
)
def test_probability_gives_direction_signal_and_confidence(
    p: float, direction: str, signal: str, confidence: float
) -> None:
    described = describe_probability(p, model_type="lstm", buy_threshold=0.6, sell_threshold=0.4)

    assert described == {
        "prediction": p,
        "confidence": pytest.approx(confidence),
        "direction": direction,
        "signal": signal,
        "move": None,
        "modelType": "lstm",
    }


def test_hold_only_keeps_the_numbers_and_holds() -> None:
    described = describe_probability(
        0.9, model_type="gru", buy_threshold=0.6, sell_threshold=0.4, hold_only=True
    )

    assert described["signal"] == "HOLD"
    assert described["prediction"] == 0.9
    assert described["direction"] == "up"


def test_neutral_prediction_is_a_coin_toss_with_hold() -> None:
    assert neutral_prediction("lstm") == {
        "prediction": 0.5,
        "confidence": 0.0,
        "direction": "neutral",
        "signal": "HOLD",
        "move": None,
        "modelType": "lstm",
    }


def test_a_decided_signal_and_the_move_are_carried() -> None:
    described = describe_probability(
        0.7,
        model_type="lightgbm",
        buy_threshold=0.6,
        sell_threshold=0.4,
        move=0.31234567,
        signal="HOLD",
    )

    assert described["signal"] == "HOLD"  # the thresholds alone would say BUY
    assert described["move"] == 0.312346
