"""The parameters of one training, as the `train` entry point takes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.pairs import check_model_type, normalize_symbol
from pipelines.settings import Settings


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
    data_dir: Path | None = None
    max_rows: int = 0
    register: bool = True
    promote: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "pair", normalize_symbol(self.pair))
        object.__setattr__(self, "model_type", check_model_type(self.model_type))
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "sequence_length": self.sequence_length >= 2,
            "units": self.units >= 1,
            "layers": self.layers >= 1,
            "horizon": self.horizon >= 1,
            "max_rows": self.max_rows >= 0,
            "dropout": 0.0 <= self.dropout < 1.0,
            "learning_rate": 0.0 < self.learning_rate < 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            raise ValueError(
                f"invalid {name} {getattr(self, name)!r}: epochs, batch_size, units, layers and "
                "horizon must be >= 1, sequence_length >= 2, max_rows >= 0 (0 = all candles), "
                "0 <= dropout < 1 and 0 < learning_rate < 1"
            )

    @classmethod
    def from_settings(cls, settings: Settings, *, pair: str, **overrides: Any) -> TrainConfig:
        """Defaults from settings (the original service's configuration), then `overrides`."""
        base = cls(
            pair=pair,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            sequence_length=settings.sequence_length,
            units=settings.lstm_units,
            layers=settings.lstm_layers,
            dropout=settings.dropout,
            learning_rate=settings.learning_rate,
            horizon=settings.horizon,
        )
        return replace(base, **overrides)

    def params(self) -> dict[str, Any]:
        """What MLflow logs as the run's parameters."""
        values = asdict(self)
        values["data_dir"] = str(self.data_dir) if self.data_dir is not None else ""
        return values
