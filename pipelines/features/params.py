"""The parameters of a feature set: its name, periods and indicator settings, validated once.

A spec carries them as a plain JSON dictionary (`FeatureParams.to_dict`), so a trained model's
features can be rebuilt from its spec alone. The dictionary holds only the keys its feature set
reads, and no `feature_set` key for the default set: the default spec is the one that existed
before there were several sets, with the same parameters and so the same version.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipelines.candles.timeframes import timeframe_delta

# The named feature sets, in the order the docs list them.
FEATURE_SETS: tuple[str, ...] = ("default", "extended", "raw", "cross")
DEFAULT_SET = "default"
# The parameters that only one set reads; every other field (but `feature_set`) is read by the
# engineered groups of `default` and `extended`.
_EXTENDED_ONLY = ("base_timeframe", "higher_timeframes", "higher_period")
_RAW_ONLY = ("raw_volume_period",)
_CROSS_ONLY = ("reference_pairs", "cross_horizons")
# A reference pair's code becomes part of a column name (`ref_close_<PAIR>`).
_PAIR_CODE = re.compile(r"^[A-Z0-9]{1,20}$")
_DAY_SECONDS = 86_400


class InvalidFeatureParamsError(ValueError):
    """A feature parameter is missing, unknown or out of range; the message names it."""


def timeframe_seconds(timeframe: str) -> int:
    """`4h` -> 14400; raises InvalidFeatureParamsError naming a malformed timeframe."""
    try:
        return int(timeframe_delta(timeframe).total_seconds())
    except (TypeError, ValueError) as exc:
        raise InvalidFeatureParamsError(str(exc)) from exc


@dataclass(frozen=True)
class FeatureParams:
    """Every number the feature formulas use.

    `periods` are the lookback periods of the indicators that have one (RSI, Bollinger, SMA,
    EMA, volume, stochastic, Williams %R, ADX, CCI, MFI, NATR, realised volatility).
    Indicators with a conventional fixed shape (MACD, Ichimoku, Parabolic SAR) keep theirs.

    `feature_set` names the set (`FEATURE_SETS`). `extended` adds features of the candles of
    `higher_timeframes`, aggregated from candles of `base_timeframe`, with windows of
    `higher_period` higher-timeframe candles; `raw` reads only `raw_volume_period`. `cross`
    adds the returns of `reference_pairs` over `cross_horizons` candles (the first pair is the
    anchor; all of them make the market), read from `ref_close_<PAIR>` columns of the candles.
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
    feature_set: str = DEFAULT_SET
    base_timeframe: str = "1h"
    higher_timeframes: tuple[str, ...] = ("4h", "1d")
    higher_period: int = 14
    raw_volume_period: int = 20
    reference_pairs: tuple[str, ...] = ("BTC",)
    cross_horizons: tuple[int, ...] = (1, 5, 20)

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise InvalidFeatureParamsError(
                f"unknown feature set {self.feature_set!r}: expected one of "
                f"{', '.join(FEATURE_SETS)}"
            )
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
        _require_int("higher_period", self.higher_period, minimum=2)
        _require_int("raw_volume_period", self.raw_volume_period, minimum=2)
        if self.feature_set == "extended":
            self._check_timeframes()
        if self.feature_set == "cross":
            self._check_references()

    def _check_references(self) -> None:
        pairs = self.reference_pairs
        if not pairs or len(set(pairs)) != len(pairs):
            raise InvalidFeatureParamsError(
                "reference_pairs must be a non-empty list of distinct pair codes, "
                f"got {list(pairs)}"
            )
        for pair in pairs:
            if not isinstance(pair, str) or not _PAIR_CODE.match(pair):
                raise InvalidFeatureParamsError(
                    f"reference pair {pair!r} is not a pair code: 1 to 20 capital letters or digits"
                )
        horizons = self.cross_horizons
        if not horizons or len(set(horizons)) != len(horizons):
            raise InvalidFeatureParamsError(
                "cross_horizons must be a non-empty list of distinct integers, "
                f"got {list(horizons)}"
            )
        for value in horizons:
            _require_int("cross_horizons", value, minimum=1)

    def _check_timeframes(self) -> None:
        base = timeframe_seconds(self.base_timeframe)
        higher = self.higher_timeframes
        if not higher or len(set(higher)) != len(higher):
            raise InvalidFeatureParamsError(
                f"higher_timeframes must be a non-empty list of distinct timeframes, "
                f"got {list(higher)}"
            )
        for timeframe in higher:
            span = timeframe_seconds(timeframe)
            # UTC-aligned buckets of the epoch are calendar days only for spans dividing a day.
            if _DAY_SECONDS % span:
                raise InvalidFeatureParamsError(
                    f"higher timeframe {timeframe} must divide 1d so that its candles align "
                    "with UTC days, such as 4h, 12h or 1d"
                )
            if span <= base or span % base:
                raise InvalidFeatureParamsError(
                    f"higher timeframe {timeframe} must be a whole multiple (2 or more) of the "
                    f"base timeframe {self.base_timeframe}"
                )

    def keys(self) -> tuple[str, ...]:
        """The parameters its feature set reads, as `to_dict` writes them."""
        return _set_keys(self.feature_set)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of the set's parameters (tuples become lists)."""
        values = asdict(self)
        return {
            key: list(values[key]) if isinstance(values[key], tuple) else values[key]
            for key in self.keys()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureParams:
        """The inverse of `to_dict`; an unknown or missing key is an error, not a default."""
        feature_set = data.get("feature_set", DEFAULT_SET)
        if feature_set not in FEATURE_SETS:
            raise InvalidFeatureParamsError(
                f"unknown feature set {feature_set!r}: expected one of {', '.join(FEATURE_SETS)}"
            )
        known = set(_set_keys(feature_set))
        unknown = sorted(set(data) - known)
        missing = sorted(known - set(data))
        if unknown or missing:
            raise InvalidFeatureParamsError(
                f"feature params do not match this code: unknown {unknown or 'none'}, "
                f"missing {missing or 'none'}; the {feature_set} set expects exactly "
                f"{sorted(known)}"
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


def _set_keys(feature_set: str) -> tuple[str, ...]:
    names = [f.name for f in fields(FeatureParams)]
    engineered = [
        n for n in names if n not in {"feature_set", *_EXTENDED_ONLY, *_RAW_ONLY, *_CROSS_ONLY}
    ]
    if feature_set == DEFAULT_SET:
        return tuple(engineered)
    if feature_set == "extended":
        return ("feature_set", *engineered, *_EXTENDED_ONLY)
    if feature_set == "cross":
        return ("feature_set", *engineered, *_CROSS_ONLY)
    return ("feature_set", *_RAW_ONLY)


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidFeatureParamsError(f"{name} must be an integer >= {minimum}, got {value!r}")
