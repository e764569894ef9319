"""From a model's probability of "up" to the prediction object of the original service.

The derivation itself lives in `pipelines.signals`, shared with the registered pyfunc model.
"""

from __future__ import annotations

from typing import Any

from pipelines.signals import describe_probability

__all__ = ["describe_probability", "neutral_prediction"]


def neutral_prediction(model_type: str) -> dict[str, Any]:
    """What the original served without a model: a coin toss and HOLD."""
    return {
        "prediction": 0.5,
        "confidence": 0.0,
        "direction": "neutral",
        "signal": "HOLD",
        "modelType": model_type,
    }
