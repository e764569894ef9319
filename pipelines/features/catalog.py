"""The registry of features: every feature's name, warm-up and definition, beside its formula.

A feature group is one function that computes a list of arrays, decorated with the names,
warm-ups and one-line definitions of those arrays in the same order. The registry is the
single source for the feature names of a spec, the warm-up and the docs table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from pipelines.features.params import FeatureParams

Array = np.ndarray
# (name, warm-up, definition): warm-up is the number of leading rows where the feature is NaN.
Described = list[tuple[str, int, str]]


class InvalidCandlesError(ValueError):
    """The candle frame cannot be turned into features; the message says why."""


@dataclass(frozen=True)
class FeatureDef:
    """One feature: its column name, its group, its warm-up and its definition."""

    name: str
    group: str
    warmup: int
    definition: str


@dataclass(eq=False)
class Inputs:
    """The candle columns as contiguous float64 arrays, with intermediates shared by groups."""

    open: Array
    high: Array
    low: Array
    close: Array
    volume: Array
    # Seconds since the epoch (UTC) of each candle's open time.
    epoch_seconds: Array = field(repr=False)
    # Other pairs' closes at each row's time (`ref_close_<PAIR>` columns), NaN before a pair's
    # first candle; only the cross-pair features read them.
    references: dict[str, Array] = field(default_factory=dict, repr=False)

    @cached_property
    def log_close(self) -> Array:
        return np.log(self.close)

    @cached_property
    def log_return(self) -> Array:
        """ln(close[t] / close[t-1]); NaN on the first row."""
        out = np.empty_like(self.close)
        out[0] = np.nan
        np.subtract(self.log_close[1:], self.log_close[:-1], out=out[1:])
        return out


Compute = Callable[[Inputs, FeatureParams], list[Array]]


@dataclass(frozen=True)
class FeatureGroup:
    """A function computing several features, with their descriptions in the same order."""

    name: str
    title: str
    describe: Callable[[FeatureParams], Described]
    compute: Compute

    def features(self, params: FeatureParams) -> list[FeatureDef]:
        return [
            FeatureDef(name=name, group=self.name, warmup=warmup, definition=definition)
            for name, warmup, definition in self.describe(params)
        ]


def feature_group(
    title: str, describe: Callable[[FeatureParams], Described]
) -> Callable[[Compute], FeatureGroup]:
    """Declare a group: `describe(params)` lists what the decorated function returns, in order."""

    def wrap(compute: Compute) -> FeatureGroup:
        return FeatureGroup(name=compute.__name__, title=title, describe=describe, compute=compute)

    return wrap


def ratio(num: Array, den: Array, *, fallback: float) -> Array:
    """num / den, with `fallback` where den is 0 (never inf); NaN stays NaN."""
    out = np.full_like(num, fallback)
    np.divide(num, den, out=out, where=den != 0)
    out[np.isnan(num) | np.isnan(den)] = np.nan
    return out


def distance(close: Array, level: Array) -> Array:
    """close / level - 1: how far above (positive) or below the close is from a price level."""
    return ratio(close, level, fallback=1.0) - 1.0


def shift(values: Array, periods: int) -> Array:
    """values[t - periods] at row t, NaN for the first `periods` rows (never reads ahead)."""
    out = np.full_like(values, np.nan)
    if periods < len(values):
        out[periods:] = values[: len(values) - periods]
    return out


def epoch_seconds(index: pd.DatetimeIndex) -> Array:
    """Seconds since 1970-01-01 UTC as float64; a naive index is taken to be UTC."""
    return index.as_unit("s").asi8.astype(np.float64)
