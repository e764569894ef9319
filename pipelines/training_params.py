"""The parameters of one training: their one definition, bounds, defaults and settings.

Every way of starting a training derives from `PARAMS`: the HTTP body of `POST /api/train`,
the queue's validation, `tbml train`, `tbml queue enqueue`, the bootstrap trainings of
`tbml up` and the MLproject `train` entry point. A parameter that is not given is the value
of its setting (`ML_LSTM_UNITS` for `units`, ...), read by the process that trains: MLproject
does not declare these parameters with defaults of its own (MLflow would log its default
before the training could log the setting's value), so `mlflow run . -e train -P pair=BTC`
trains with the settings and an explicit `-P units=64` still wins. A test holds MLproject to
this definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class TrainingParamError(ValueError):
    """A training parameter is unknown or out of its bounds; the message names both."""

    def __init__(self, message: str, *, name: str, value: object) -> None:
        super().__init__(message)
        self.name = name
        self.value = value


@dataclass(frozen=True)
class Param:
    """One parameter of a training: its type, bounds and the setting that gives its default."""

    name: str
    kind: type[int] | type[float]
    low: float
    high: float
    setting: str
    help: str
    high_inclusive: bool = True

    @property
    def env(self) -> str:
        """The environment variable of its setting (`ML_LSTM_UNITS`)."""
        return "ML_" + self.setting.upper()

    @property
    def camel(self) -> str:
        """The name in JSON bodies (`learningRate`)."""
        head, *rest = self.name.split("_")
        return head + "".join(part.title() for part in rest)

    def describe(self) -> str:
        """The rule in words, for error messages."""
        kind = "an integer" if self.kind is int else "a number"
        op = "<=" if self.high_inclusive else "<"
        return f"{kind} with {self._shown(self.low)} <= value {op} {self._shown(self.high)}"

    def field_bounds(self) -> dict[str, Any]:
        """The bounds as pydantic `Field` keywords (for the settings and JSON schemas)."""
        high = "le" if self.high_inclusive else "lt"
        return {"ge": self.kind(self.low), high: self.kind(self.high)}

    def json_schema(self) -> dict[str, Any]:
        """The parameter in a JSON schema (the OpenAPI document of the training routes)."""
        bounds = {"minimum": self.kind(self.low)}
        bounds["maximum" if self.high_inclusive else "exclusiveMaximum"] = self.kind(self.high)
        kind = "integer" if self.kind is int else "number"
        return {"type": kind, **bounds, "description": f"{self.help} Default: {self.env}."}

    def check(self, value: object) -> int | float:
        """`value` as this parameter's type; numeric strings are read, booleans refused."""

        def fail() -> TrainingParamError:
            return TrainingParamError(
                f"invalid {self.name} {value!r}: expected {self.describe()}",
                name=self.name,
                value=value,
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
        if number != number:  # NaN
            raise fail()
        if self.kind is int:
            if not float(number).is_integer():
                raise fail()
            number = int(number)
        else:
            number = float(number)
        too_high = number > self.high if self.high_inclusive else number >= self.high
        if number < self.low or too_high:
            raise fail()
        return number

    def _shown(self, bound: float) -> str:
        return str(int(bound)) if self.kind is int else str(bound)


def _param(name: str, kind: type[int] | type[float], low: float, high: float, **rest: Any) -> Param:
    return Param(name=name, kind=kind, low=low, high=high, **rest)


# The bounds fit this machine (2 cores): the largest model trains in hours, not days.
PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        _param("epochs", int, 1, 1000, setting="epochs", help="Most epochs (early stopping)."),
        _param("batch_size", int, 1, 4096, setting="batch_size", help="Samples per step."),
        _param(
            "sequence_length", int, 2, 1000, setting="sequence_length", help="Candles per window."
        ),
        _param("units", int, 1, 1024, setting="lstm_units", help="Units per layer."),
        _param("layers", int, 1, 8, setting="lstm_layers", help="Recurrent (or conv) layers."),
        _param(
            "dropout", float, 0.0, 1.0, high_inclusive=False, setting="dropout", help="Dropout."
        ),
        _param(
            "learning_rate",
            float,
            1e-7,
            1.0,
            high_inclusive=False,
            setting="learning_rate",
            help="Adam's learning rate.",
        ),
        _param("horizon", int, 1, 168, setting="horizon", help="Candles ahead the label looks."),
        _param("seed", int, 0, 2**31 - 1, setting="seed", help="Seed of every random draw."),
        _param(
            "max_rows",
            int,
            0,
            100_000_000,
            setting="max_rows",
            help="Newest candles used (0 = all).",
        ),
    )
}

_BY_CAMEL = {param.camel: param for param in PARAMS.values()}


def lookup(name: str) -> Param:
    """The parameter called `name` (snake_case or the JSON camelCase)."""
    param = PARAMS.get(name) or _BY_CAMEL.get(name)
    if param is None:
        raise TrainingParamError(
            f"unknown training parameter {name!r}: allowed parameters are {', '.join(PARAMS)}",
            name=name,
            value=None,
        )
    return param


def check_params(raw: Mapping[str, object] | None) -> dict[str, int | float]:
    """The given parameters checked and typed, under their snake_case names; unknown refused."""
    checked: dict[str, int | float] = {}
    for name, value in (raw or {}).items():
        try:
            param = lookup(name)
        except TrainingParamError as error:
            raise TrainingParamError(str(error), name=name, value=value) from None
        checked[param.name] = param.check(value)
    return checked


def resolve(settings: Any, overrides: Mapping[str, object] | None = None) -> dict[str, Any]:
    """Every parameter: the checked `overrides`, and the settings' values for the others."""
    given = check_params(overrides)
    return {
        name: given[name] if name in given else getattr(settings, param.setting)
        for name, param in PARAMS.items()
    }


def body_schema() -> dict[str, Any]:
    """The JSON schema properties of the parameters as the HTTP body names them."""
    return {param.camel: param.json_schema() for param in PARAMS.values()}
