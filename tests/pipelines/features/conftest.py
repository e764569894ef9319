"""Fixtures of the feature tests: the bundled candles (read-only) and their full features."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pandas as pd
import pytest

from pipelines.candles.store import CandleStore
from pipelines.features.compute import compute_features
from pipelines.settings import PROJECT_ROOT

BUNDLED = PROJECT_ROOT / "data" / "ohlcv"


@cache
def _store() -> CandleStore:
    # The bundled files are immutable, so one store (and its parse cache) serves every test.
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED / "no-ingested-data")


@cache
def _features(pair: str) -> pd.DataFrame:
    return compute_features(_store().load(pair))


@pytest.fixture
def candles() -> Callable[[str], pd.DataFrame]:
    """`candles("BTC")`: the bundled hourly candles of a pair."""
    return _store().load


@pytest.fixture
def full_features() -> Callable[[str], pd.DataFrame]:
    """`full_features("BTC")`: the default features of a pair's whole bundled history."""
    return _features
