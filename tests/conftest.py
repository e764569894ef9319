"""Shared fixtures: settings that point every store at a temporary directory."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from pipelines.settings import PROJECT_ROOT, Settings

# Quiet TensorFlow's C++ logging in any test that imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BUNDLED = PROJECT_ROOT / "data" / "ohlcv"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a fresh data dir, MLflow store and service database under `tmp_path`."""
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        bundled_data_dir=BUNDLED,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "mlruns",
        database_url=f"sqlite:///{tmp_path / 'service.db'}",
    )


def write_newer_candles(
    data_dir: Path,
    *,
    pair: str = "BTC",
    hours: int = 48,
    exchange: str = "binance",
    quote: str = "USDT",
) -> str:
    """Ingest `hours` hourly candles newer than the bundled file (its last ones, moved on).

    Returns the ISO time of the newest one, as the run's `data_range` tag writes it.
    """
    import pandas as pd

    from pipelines.candles.validate import read_candle_file

    bundled = read_candle_file(BUNDLED / f"{pair}-USDT_1h.csv.gz")
    tail = bundled.iloc[-hours:].copy()
    tail.index = tail.index + pd.Timedelta(hours=hours)
    path = data_dir / "candles" / exchange / f"{pair}-{quote}_1h.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = tail.reset_index()
    frame["timestamp"] = frame["timestamp"].map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    frame.to_csv(path, index=False)
    return str(tail.index[-1].isoformat())
