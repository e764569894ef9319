"""The feature-set spec: names, parameters, warm-up, lookback and a version, carried by a model.

A trained model stores its spec; `ensure_compatible` compares it with `default_spec()` (the
running code's feature set) so that serving can refuse a model whose features differ.

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
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipelines.features.catalog import FeatureDef
from pipelines.features.groups import GROUPS
from pipelines.features.params import FeatureParams, InvalidFeatureParamsError

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
    return [feature for group in GROUPS for feature in group.features(params)]


def memory_period(params: FeatureParams) -> int:
    """The longest smoothing memory among the features, in candles."""
    # ADX smooths twice with Wilder's 1/n, MACD chains two EMAs; SAR's memory is a few trends.
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
    """The running code's feature set."""
    return build_spec(FeatureParams())


def resolve_spec(spec: FeatureSpec | None) -> tuple[FeatureSpec, FeatureParams]:
    """Check that this code computes `spec` (default: `default_spec()`) and parse its params."""
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
    """Raise unless a model trained on `trained` can be fed the `running` features."""
    running = running if running is not None else default_spec()
    if trained.version == running.version and trained.names == running.names:
        return
    missing = [n for n in trained.names if n not in running.names]
    extra = [n for n in running.names if n not in trained.names]
    raise FeatureSpecMismatchError(
        f"model features version {trained.version} differ from the running version "
        f"{running.version}: {len(missing)} missing ({', '.join(missing[:5]) or 'none'}), "
        f"{len(extra)} new ({', '.join(extra[:5]) or 'none'}); retrain the model"
    )
