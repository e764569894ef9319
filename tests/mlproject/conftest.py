"""Real candles for the training tests (the bundled BTC file, loaded once)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.candles.store import CandleStore
from tests.conftest import BUNDLED


@pytest.fixture(scope="session")
def btc_candles() -> pd.DataFrame:
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED.parent / "none").load("BTC")
