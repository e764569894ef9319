"""From a model's probability of "up" to the prediction object of the original service.

It sits in the lower layer because two places derive the same fields: the service, and the
registered pyfunc model (`pipelines.pyfunc_model`) that `mlflow models serve` runs.
"""

from __future__ import annotations

from typing import Any

from pipelines.lifecycle.signal import HOLD, raw_signal


def describe_probability(
    probability: float,
    *,
    model_type: str,
    buy_threshold: float,
    sell_threshold: float,
    hold_only: bool = False,
    move: float | None = None,
    signal: str | None = None,
) -> dict[str, Any]:
    """`{prediction, confidence, direction, signal, move, modelType}`.

    `confidence` is the probability the model gives to the direction it states (0.5 = coin toss,
    1.0 = certain). `hold_only` forces HOLD (an unproven model) while still showing the numbers.
    `move` is the magnitude forecast (the probability that the next move clears the round-trip
    fee; None: the version has none). `signal`, when given, is the one
    `pipelines.lifecycle.signal.served_signal` decided, and replaces the thresholds' own.
    """
    p = float(probability)
    direction = "up" if p >= 0.5 else "down"
    if signal is None:
        signal = (
            HOLD
            if hold_only
            else raw_signal(p, buy_threshold=buy_threshold, sell_threshold=sell_threshold)
        )
    return {
        "prediction": round(p, 6),
        "confidence": round(max(p, 1.0 - p), 6),
        "direction": direction,
        "signal": signal,
        "move": None if move is None else round(float(move), 6),
        "modelType": model_type,
    }
