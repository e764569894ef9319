"""From a model's probability of "up" to the prediction object of the original service.

The derivation from a probability is `pipelines.signals.describe_probability`, shared with the
registered pyfunc model; this is what the service answers without a model.
"""

from __future__ import annotations

from typing import Any


def neutral_prediction(model_type: str) -> dict[str, Any]:
    """What the original served without a model: a coin toss and HOLD."""
    return {
        "prediction": 0.5,
        "confidence": 0.0,
        "direction": "neutral",
        "signal": "HOLD",
        "move": None,
        "modelType": model_type,
    }
