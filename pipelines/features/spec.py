"""The feature-set spec: names, parameters, warm-up, lookback and a version, carried by a model.

`feature_spec(name)` builds a named set (`FEATURE_SETS`); the name travels in the spec's
parameters, so `resolve_spec` rebuilds any stored spec. A trained model stores its spec;
`ensure_compatible` compares it with the running code's spec of the same set, so that serving
can refuse a model whose features differ.

The version is a short hash of the names, the parameters and `REVISION`. **Bump `REVISION`
whenever a formula changes without changing a name or a parameter** (a different smoothing, a
fixed bug, a new fallback value), so that models trained on the old formulas are refused instead
of silently fed different numbers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.features.catalog import FeatureDef
from pipelines.features.groups import FEATURE_SET_GROUPS
from pipelines.features.params import (
    DEFAULT_SET,
    FEATURE_SETS,
    FeatureParams,
    InvalidFeatureParamsError,
    timeframe_seconds,
)

__all__ = [
    "FEATURE_SETS",
    "FeatureSpec",
    "FeatureSpecMismatchError",
    "build_spec",
    "default_spec",
    "ensure_compatible",
    "feature_defs",
    "feature_set_of",
    "feature_spec",
    "memory_period",
    "reference_pairs",
    "resolve_spec",
]

# Bump when a formula changes (see the module docstring).
REVISION = 1

# Candles of history, per candle of the longest smoothing memory, that the incremental path
# reads before its first row so that exponential and Wilder smoothings (which never forget) and
# Parabolic SAR agree with the full-history values within `INCREMENTAL_TOLERANCE`. Measured on
# the bundled candles of all pairs; see docs/features.md.
MEMORY_FACTOR = 15
INCREMENTAL_TOLERANCE = 1e-8


class FeatureSpecMismatchError(ValueError):
    """A spec does not match the features this code computes; the message says how."""


@dataclass(frozen=True)
class FeatureSpec:
    """What a model was trained on: the feature columns and how they were computed."""

    names: tuple[str, ...]
    params: dict[str, Any] = field(hash=False)
    version: str
    warmup: int
    lookback: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "names": list(self.names),
            "params": copy.deepcopy(self.params),
            "warmup": self.warmup,
            "lookback": self.lookback,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        expected = {"version", "names", "params", "warmup", "lookback"}
        if not isinstance(data, dict) or set(data) != expected:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise FeatureSpecMismatchError(
                f"not a feature spec: keys {got}, expected {sorted(expected)}"
            )
        names = tuple(str(name) for name in data["names"])
        if len(set(names)) != len(names):
            raise FeatureSpecMismatchError("feature spec names are not unique")
        return cls(
            names=names,
            params=copy.deepcopy(dict(data["params"])),
            version=str(data["version"]),
            warmup=int(data["warmup"]),
            lookback=int(data["lookback"]),
        )

    def save(self, path: Path) -> None:
        """Write the spec as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.from_dict(json.loads(path.read_text()))


def feature_defs(params: FeatureParams) -> list[FeatureDef]:
    """Every feature of `params`, in column order."""
    groups = FEATURE_SET_GROUPS[params.feature_set]
    return [feature for group in groups for feature in group.features(params)]


def memory_period(params: FeatureParams) -> int:
    """The longest smoothing memory among the features, in candles (0: every window is finite)."""
    if params.feature_set == "raw":
        return 0
    # ADX smooths twice with Wilder's 1/n, MACD chains two EMAs; SAR's memory is a few trends.
    # The higher-timeframe windows are finite: their warm-up covers them.
    return max(2 * max(params.periods), params.macd_slow + params.macd_signal)


def build_spec(params: FeatureParams) -> FeatureSpec:
    """The spec this code produces for `params`."""
    return _build_spec(json.dumps(params.to_dict(), sort_keys=True))


@lru_cache(maxsize=32)
def _build_spec(params_json: str) -> FeatureSpec:
    params = FeatureParams.from_dict(json.loads(params_json))
    defs = feature_defs(params)
    names = tuple(d.name for d in defs)
    if len(set(names)) != len(names):
        raise FeatureSpecMismatchError(f"duplicate feature names in {names}")
    warmup = max(d.warmup for d in defs)
    lookback = max(warmup, math.ceil(MEMORY_FACTOR * memory_period(params)))
    payload = json.dumps(
        {"names": names, "params": params.to_dict(), "revision": REVISION}, sort_keys=True
    )
    version = hashlib.sha256(payload.encode()).hexdigest()[:12]
    return FeatureSpec(
        names=names, params=params.to_dict(), version=version, warmup=warmup, lookback=lookback
    )


def default_spec() -> FeatureSpec:
    """The running code's default feature set (`feature_spec("default")`)."""
    return build_spec(FeatureParams())


def feature_spec(
    name: str, *, timeframe: str = "1h", references: Sequence[str] = ()
) -> FeatureSpec:
    """The spec of the named feature set, for candles of `timeframe`.

    Args:
        name: one of `FEATURE_SETS`: `default` (the engineered features), `extended` (default
            plus features of closed 4h and 1d candles) or `raw` (each candle's log returns
            against the previous close and its relative volume).
        timeframe: the candles' timeframe, such as `1h` or `15m`. Only `extended` reads it:
            it keeps the higher timeframes longer than this one (a `4h` base keeps only `1d`)
            and refuses a timeframe that leaves none or that does not divide one.
        references: for `cross` only, the pairs whose returns become features, the anchor
            first (`cross_references(settings)` gives the configured ones); required there.

    Raises:
        InvalidFeatureParamsError: an unknown name or an unusable timeframe; the message names
            it and what is allowed.
    """
    if name not in FEATURE_SETS:
        raise InvalidFeatureParamsError(
            f"unknown feature set {name!r}: expected one of {', '.join(FEATURE_SETS)}"
        )
    if name == DEFAULT_SET:
        return default_spec()
    if name == "raw":
        return build_spec(FeatureParams(feature_set="raw"))
    if name == "cross":
        if not references:
            raise InvalidFeatureParamsError(
                "the cross feature set needs its reference pairs (the anchor first), got none"
            )
        return build_spec(FeatureParams(feature_set="cross", reference_pairs=tuple(references)))
    base = timeframe_seconds(timeframe)
    higher = tuple(h for h in FeatureParams.higher_timeframes if timeframe_seconds(h) > base)
    if not higher:
        raise InvalidFeatureParamsError(
            f"the extended feature set needs candles shorter than its higher timeframes "
            f"{', '.join(FeatureParams.higher_timeframes)}, got timeframe {timeframe}"
        )
    return build_spec(
        FeatureParams(feature_set="extended", base_timeframe=timeframe, higher_timeframes=higher)
    )


def reference_pairs(spec: FeatureSpec) -> tuple[str, ...]:
    """The pairs whose closes `spec` reads beside the candles (none but for `cross`)."""
    if feature_set_of(spec) != "cross":
        return ()
    return tuple(str(pair) for pair in spec.params.get("reference_pairs", ()))


def feature_set_of(spec: FeatureSpec) -> str:
    """The name of the feature set a spec was built from (its params name it, or `default`)."""
    return str(spec.params.get("feature_set", DEFAULT_SET))


def resolve_spec(spec: FeatureSpec | None) -> tuple[FeatureSpec, FeatureParams]:
    """Check that this code computes `spec` (default: `default_spec()`) and parse its params.

    Any stored spec of a known set whose parameters this code accepts is rebuilt from them; it
    is refused when the rebuilt names or version differ (a formula changed since).
    """
    if spec is None:
        spec = default_spec()
    ours, params = _resolve(json.dumps(spec.params, sort_keys=True))
    if ours.version != spec.version or ours.names != spec.names:
        raise FeatureSpecMismatchError(
            f"feature spec version {spec.version} cannot be computed by this code: its "
            f"parameters give version {ours.version} here (feature revision {REVISION}); "
            "retrain the model with the current features"
        )
    return ours, params


@lru_cache(maxsize=32)
def _resolve(params_json: str) -> tuple[FeatureSpec, FeatureParams]:
    try:
        params = FeatureParams.from_dict(json.loads(params_json))
    except InvalidFeatureParamsError as exc:
        raise FeatureSpecMismatchError(
            f"feature spec parameters cannot be computed by this code: {exc}"
        ) from exc
    return build_spec(params), params


def ensure_compatible(trained: FeatureSpec, running: FeatureSpec | None = None) -> None:
    """Raise unless a model trained on `trained` can be fed the `running` features.

    `running` defaults to this code's spec of the trained set (`feature_spec` of its name, for
    the trained base timeframe where the set has one): a default-set model must match
    `default_spec()`, an extended one today's extended set.
    """
    running = running if running is not None else _running_spec(trained)
    if trained.version == running.version and trained.names == running.names:
        return
    missing = [n for n in trained.names if n not in running.names]
    extra = [n for n in running.names if n not in trained.names]
    raise FeatureSpecMismatchError(
        f"model features version {trained.version} differ from the running version "
        f"{running.version}: {len(missing)} missing ({', '.join(missing[:5]) or 'none'}), "
        f"{len(extra)} new ({', '.join(extra[:5]) or 'none'}); retrain the model"
    )


def _running_spec(trained: FeatureSpec) -> FeatureSpec:
    name = feature_set_of(trained)
    try:
        if name == "extended":
            return feature_spec(name, timeframe=str(trained.params.get("base_timeframe")))
        if name == "cross":
            return feature_spec(name, references=tuple(trained.params.get("reference_pairs", ())))
        return feature_spec(name)
    except InvalidFeatureParamsError as exc:
        raise FeatureSpecMismatchError(
            f"model features version {trained.version} cannot be computed by this code: {exc}; "
            "retrain the model"
        ) from exc
