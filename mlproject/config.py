"""One training as the `train` entry point runs it: what to train, on which data, and how.

The numeric parameters and their bounds are `pipelines.training_params.PARAMS`; their defaults
here are only for code that builds a config by hand (tests): the entry point, the queue and
`tbml train` build it with `from_settings`, so a parameter left out is the setting's value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipelines.features.params import FEATURE_SETS
from pipelines.pairs import check_model_type, normalize_symbol
from pipelines.settings import Settings
from pipelines.training_params import PARAMS, TrainingParamError, resolve


@dataclass(frozen=True)
class TrainConfig:
    """One training: the data, the architecture, the optimiser and what to do afterwards."""

    pair: str
    model_type: str = "lstm"
    epochs: int = 100
    batch_size: int = 32
    sequence_length: int = 60
    units: int = 50
    layers: int = 2
    dropout: float = 0.2
    learning_rate: float = 0.001
    horizon: int = 1
    seed: int = 42
    max_rows: int = 0
    # Data root of ingested candles; None = the settings' (ML_DATA_DIR).
    data_dir: Path | None = None
    # pipelines.features.spec.FEATURE_SETS; None = the settings' (ML_FEATURE_SET).
    feature_set: str | None = None
    # The newest candle the training may read (ISO 8601 UTC, as `tbml backtest` trains "as of"
    # an hour); None = every candle the store holds.
    until: str | None = None
    register: bool = True
    promote: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "pair", normalize_symbol(self.pair))
        object.__setattr__(self, "model_type", check_model_type(self.model_type))
        if self.feature_set is not None and self.feature_set not in FEATURE_SETS:
            raise ValueError(
                f"unknown feature set {self.feature_set!r}: allowed feature sets are "
                f"{', '.join(FEATURE_SETS)}"
            )
        if self.until is not None:
            object.__setattr__(self, "until", _utc_text(self.until))
        for name, param in PARAMS.items():
            try:
                object.__setattr__(self, name, param.check(getattr(self, name)))
            except TrainingParamError as error:
                raise ValueError(str(error)) from None

    @classmethod
    def from_settings(cls, settings: Settings, *, pair: str, **overrides: Any) -> TrainConfig:
        """The settings' value for every training parameter not in `overrides`.

        `overrides` may also set `model_type`, `data_dir`, `register` and `promote`; a numeric
        parameter in it is checked against its definition (the error names value and rule).
        """
        numeric = {k: v for k, v in overrides.items() if k in PARAMS}
        others = {k: v for k, v in overrides.items() if k not in PARAMS}
        unknown = set(others) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        try:
            values = resolve(settings, numeric)
        except TrainingParamError as error:
            raise ValueError(str(error)) from None
        return cls(pair=pair, **values, **others)

    def params(self) -> dict[str, Any]:
        """What MLflow logs as the run's parameters."""
        values = asdict(self)
        values["data_dir"] = str(self.data_dir) if self.data_dir is not None else ""
        values["feature_set"] = self.feature_set or ""
        values["until"] = self.until or ""
        return values


def _utc_text(value: object) -> str:
    """`value` (a time) as ISO 8601 UTC text; the error names the value and the form allowed."""
    import pandas as pd

    try:
        moment = pd.Timestamp(value)  # type: ignore[arg-type]
        valid = not pd.isna(moment)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"until must be a time such as 2023-06-01T00:00Z (ISO 8601), got {value!r}"
        )
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return str(moment.isoformat())
