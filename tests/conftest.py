"""Shared fixtures: settings that point every store at a temporary directory."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from pipelines.settings import PROJECT_ROOT, Settings

# Quiet TensorFlow's C++ logging in any test that imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests train and serve the LSTM unless they say otherwise, here and in every service or
# training they start as a child process; the served default (LightGBM first) has tests of its
# own that clear this (tests/service/test_bootstrap.py).
os.environ.setdefault("ML_ENABLED_MODELS", "lstm")

BUNDLED = PROJECT_ROOT / "data" / "ohlcv"
# The PostgreSQL test server (trust auth); tests create databases of their own there.
SERVER_URL = os.environ.get(
    "ML_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a fresh data dir, MLflow store and service database under `tmp_path`."""
    return stores_under(tmp_path, database_url=f"sqlite:///{tmp_path / 'service.db'}")


def stores_under(root: Path, **overrides: Any) -> Settings:
    """Settings (no `.env`) whose data dir and MLflow store (a SQLite file, artifacts beside
    it) are fresh under `root`, reading the bundled candles; `overrides` on top."""
    values: dict[str, Any] = {
        "data_dir": root / "data",
        "bundled_data_dir": BUNDLED,
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "artifact_root": root / "mlruns",
        "enabled_models": ["lstm"],
        **overrides,
    }
    return Settings(_env_file=None, **values)


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


class Postgres:
    """Creates databases on the test server and drops them all at the end."""

    def __init__(self, admin: sa.Engine) -> None:
        self.admin = admin
        self.created: list[str] = []

    def create(self, prefix: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        from pipelines.db import dispose_engine

        for name in reversed(self.created):
            url = make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
            dispose_engine(url)
            with self.admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The PostgreSQL test server, or a skip that says none answers."""
    admin = sa.create_engine(
        SERVER_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except OperationalError as error:
        admin.dispose()
        pytest.skip(f"no PostgreSQL server answers at {SERVER_URL}: {error.orig}")
    server = Postgres(admin)
    try:
        yield server
    finally:
        server.drop_all()
        admin.dispose()
