"""The parameters of the feature set: periods and indicator settings, validated once.

A spec carries them as a plain JSON dictionary (`FeatureParams.to_dict`), so a trained model's
features can be rebuilt from its spec alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


class InvalidFeatureParamsError(ValueError):
    """A feature parameter is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True)
class FeatureParams:
    """Every number the feature formulas use.

    `periods` are the lookback periods of the indicators that have one (RSI, Bollinger, SMA,
    EMA, volume, stochastic, Williams %R, ADX, CCI, MFI, NATR, realised volatility).
    Indicators with a conventional fixed shape (MACD, Ichimoku, Parabolic SAR) keep theirs.
    """

    periods: tuple[int, ...] = (5, 10, 20)
    return_horizons: tuple[int, ...] = (1, 3, 5, 10, 20)
    bollinger_stddev: float = 2.0
    stoch_smoothing: int = 3
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    ichimoku_tenkan: int = 9
    ichimoku_kijun: int = 26
    ichimoku_senkou_b: int = 52
    ichimoku_displacement: int = 26
    sar_acceleration: float = 0.02
    sar_maximum: float = 0.2

    def __post_init__(self) -> None:
        for name in ("periods", "return_horizons"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise InvalidFeatureParamsError(
                    f"{name} must be a non-empty list of distinct integers, got {list(values)}"
                )
            for value in values:
                _require_int(name, value, minimum=2 if name == "periods" else 1)
        for name in (
            "stoch_smoothing",
            "macd_fast",
            "macd_signal",
            "ichimoku_tenkan",
            "ichimoku_kijun",
            "ichimoku_senkou_b",
            "ichimoku_displacement",
        ):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("macd_slow", self.macd_slow, minimum=self.macd_fast + 1)
        if not 0 < self.bollinger_stddev <= 10:
            raise InvalidFeatureParamsError(
                f"bollinger_stddev must be in (0, 10], got {self.bollinger_stddev!r}"
            )
        if not 0 < self.sar_acceleration <= self.sar_maximum <= 1:
            raise InvalidFeatureParamsError(
                "sar_acceleration and sar_maximum must satisfy 0 < acceleration <= maximum <= 1, "
                f"got {self.sar_acceleration!r} and {self.sar_maximum!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureParams:
        """The inverse of `to_dict`; an unknown or missing key is an error, not a default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(known - set(data))
        if unknown or missing:
            raise InvalidFeatureParamsError(
                f"feature params do not match this code: unknown {unknown or 'none'}, "
                f"missing {missing or 'none'}; expected exactly {sorted(known)}"
            )
        values: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value for key, value in data.items()
        }
        return cls(**values)

    @property
    def max_period(self) -> int:
        """The longest window any feature reads (without its smoothing memory)."""
        return max(
            *self.periods,
            *self.return_horizons,
            self.macd_slow + self.macd_signal,
            self.ichimoku_senkou_b + self.ichimoku_displacement,
        )


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidFeatureParamsError(f"{name} must be an integer >= {minimum}, got {value!r}")
