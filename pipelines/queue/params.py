"""Validation of what an enqueue request may carry; every error names the value and the rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.pairs import InvalidNameError, check_model_type, check_pair
from pipelines.queue.errors import QueueValidationError

PRIORITY_HIGHEST = 1
PRIORITY_LOWEST = 10
PRIORITY_DEFAULT = 5


@dataclass(frozen=True)
class Bound:
    """The type and range of one parameter of the `train` entry point."""

    kind: type[int] | type[float]
    low: float
    high: float
    high_inclusive: bool = True

    def describe(self) -> str:
        """The rule in words, for error messages."""
        kind = "an integer" if self.kind is int else "a number"
        op = "<=" if self.high_inclusive else "<"
        low = int(self.low) if self.kind is int else self.low
        high = int(self.high) if self.kind is int else self.high
        return f"{kind} with {low} <= value {op} {high}"


# The `train` entry point's parameters that a request may set (MLproject has the defaults).
TRAINING_PARAMS: dict[str, Bound] = {
    "epochs": Bound(int, 1, 1000),
    "batch_size": Bound(int, 1, 4096),
    "sequence_length": Bound(int, 2, 1000),
    "units": Bound(int, 1, 1024),
    "layers": Bound(int, 1, 8),
    "dropout": Bound(float, 0.0, 1.0, high_inclusive=False),
    "learning_rate": Bound(float, 1e-7, 1.0, high_inclusive=False),
    "horizon": Bound(int, 1, 168),
    "seed": Bound(int, 0, 2**31 - 1),
    "max_rows": Bound(int, 0, 100_000_000),
}


def _number(name: str, value: object, bound: Bound) -> int | float:
    def fail() -> QueueValidationError:
        return QueueValidationError(
            f"invalid {name} {value!r}: expected {bound.describe()}", field=name, value=value
        )

    if isinstance(value, bool):
        raise fail()
    number: int | float
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise fail() from None
    else:
        raise fail()
    if bound.kind is int:
        if number != number or not float(number).is_integer():  # NaN or a fraction
            raise fail()
        number = int(number)
    else:
        number = float(number)
        if number != number:
            raise fail()
    too_high = number > bound.high if bound.high_inclusive else number >= bound.high
    if number < bound.low or too_high:
        raise fail()
    return number


def validate_params(raw: Mapping[str, object] | None) -> dict[str, int | float]:
    """Check the training parameters of a request; unknown names are refused."""
    params: dict[str, int | float] = {}
    for name, value in (raw or {}).items():
        bound = TRAINING_PARAMS.get(name)
        if bound is None:
            raise QueueValidationError(
                f"unknown training parameter {name!r}: allowed parameters are "
                f"{', '.join(TRAINING_PARAMS)}",
                field=name,
                value=value,
            )
        params[name] = _number(name, value, bound)
    return params


def validate_priority(value: object) -> int:
    """A priority from 1 (highest) to 10 (lowest)."""
    bound = Bound(int, PRIORITY_HIGHEST, PRIORITY_LOWEST)
    try:
        return int(_number("priority", value, bound))
    except QueueValidationError:
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
