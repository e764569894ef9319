"""Validation of what an enqueue request may carry; every error names the value and the rule."""

from __future__ import annotations

from collections.abc import Mapping

from pipelines.pairs import InvalidNameError, check_model_type, check_pair
from pipelines.queue.errors import QueueValidationError
from pipelines.training_params import Param, TrainingParamError, check_params, resolve

PRIORITY_HIGHEST = 1
PRIORITY_LOWEST = 10
PRIORITY_DEFAULT = 5
_PRIORITY = Param("priority", int, PRIORITY_HIGHEST, PRIORITY_LOWEST, setting="", help="")


def validate_params(
    raw: Mapping[str, object] | None, *, settings: object | None = None
) -> dict[str, int | float]:
    """Check the training parameters of a request (pipelines.training_params); unknown refused.

    Only the given parameters are kept: the others are the settings' values when it trains.
    With `settings`, the combination with those values is checked against the size bounds.
    """
    try:
        if settings is not None:
            resolve(settings, raw)
        return check_params(raw)
    except TrainingParamError as error:
        raise QueueValidationError(str(error), field=error.name, value=error.value) from None


def validate_priority(value: object) -> int:
    """A priority from 1 (highest) to 10 (lowest)."""
    try:
        return int(_PRIORITY.check(value))
    except TrainingParamError:
        raise QueueValidationError(
            f"invalid priority {value!r}: expected an integer from {PRIORITY_HIGHEST} (highest) "
            f"to {PRIORITY_LOWEST} (lowest)",
            field="priority",
            value=value,
        ) from None


def validate_target(pair: str, model_type: str, *, pairs: list[str]) -> tuple[str, str]:
    """Normalise and check a pair (against the configured pairs) and a model type."""
    try:
        symbol = check_pair(pair, pairs)
    except InvalidNameError as error:
        raise QueueValidationError(str(error), field="pair", value=pair) from None
    try:
        kind = check_model_type(model_type)
    except InvalidNameError as error:
        raise QueueValidationError(str(error), field="modelType", value=model_type) from None
    return symbol, kind
