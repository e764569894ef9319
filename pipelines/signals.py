"""From a model's probability of "up" to the prediction object of the original service.

It sits in the lower layer because two places derive the same fields: the service, and the
registered pyfunc model (`pipelines.pyfunc_model`) that `mlflow models serve` runs.
"""

from __future__ import annotations

from typing import Any


def describe_probability(
    probability: float,
    *,
    model_type: str,
    buy_threshold: float,
    sell_threshold: float,
    hold_only: bool = False,
) -> dict[str, Any]:
    """`{prediction, confidence, direction, signal, modelType}`.

    `confidence` is the probability the model gives to the direction it states (0.5 = coin toss,
    1.0 = certain). `hold_only` forces HOLD (an unproven model) while still showing the numbers.
    """
    p = float(probability)
    direction = "up" if p >= 0.5 else "down"
    if hold_only:
        signal = "HOLD"
    elif p >= buy_threshold:
        signal = "BUY"
    elif p <= sell_threshold:
        signal = "SELL"
    else:
        signal = "HOLD"
    return {
        "prediction": round(p, 6),
        "confidence": round(max(p, 1.0 - p), 6),
        "direction": direction,
        "signal": signal,
        "modelType": model_type,
    }
