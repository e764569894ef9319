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

import math
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


@dataclass(frozen=True)
class ProductBound:
    """A limit on the product of several parameters: what one training may cost."""

    names: tuple[str, ...]
    limit: int
    why: str

    def check(self, values: Mapping[str, object]) -> None:
        """Raise `TrainingParamError` naming the product, its factors and the limit."""
        factors = [values[name] for name in self.names]
        if not all(isinstance(f, int | float) for f in factors):
            return  # a single parameter's check reports what is wrong with it
        product = math.prod(float(f) for f in factors if isinstance(f, int | float))
        if product > self.limit:
            shown = " x ".join(f"{name} {values[name]}" for name in self.names)
            raise TrainingParamError(
                f"model too large: {shown} = {product:.0f}, above the limit "
                f"{' x '.join(self.names)} <= {self.limit} ({self.why})",
                name=self.names[0],
                value={name: values[name] for name in self.names},
            )


# Sized for 2 cores and 24 GiB: the defaults (50 x 2 x 60 = 6000; 32 x 60 = 1920) have ten
# times and more headroom, and ML_TRAINING_TIMEOUT stops whatever still runs too long.
PRODUCT_BOUNDS = (
    ProductBound(
        ("units", "layers", "sequence_length"),
        64_000,
        "training time: a larger model does not train in a few hours on this machine",
    ),
    ProductBound(
        ("batch_size", "sequence_length"),
        262_144,
        "memory: one batch of windows (and a transformer's attention) must fit in memory",
    ),
)


def check_bounds(values: Mapping[str, object]) -> None:
    """Refuse a combination of parameters beyond `PRODUCT_BOUNDS` (each one may be in bounds)."""
    for bound in PRODUCT_BOUNDS:
        bound.check(values)


def resolve(settings: Any, overrides: Mapping[str, object] | None = None) -> dict[str, Any]:
    """Every parameter: the checked `overrides`, and the settings' values for the others.

    The combination is checked too (`PRODUCT_BOUNDS`), so a request, a queued job and a
    training started by hand are held to the same limits.
    """
    given = check_params(overrides)
    values = {
        name: given[name] if name in given else getattr(settings, param.setting)
        for name, param in PARAMS.items()
    }
    check_bounds(values)
    return values


def body_schema() -> dict[str, Any]:
    """The JSON schema properties of the parameters as the HTTP body names them."""
    return {param.camel: param.json_schema() for param in PARAMS.values()}
