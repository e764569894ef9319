"""The service database down (real PostgreSQL, connections refused): predictions keep serving
from memory, `/livez` stays 200, `/readyz` says 503 and what is down, `/api/health` answers 200
with the database down, no history row is lost, and all of it recovers without a restart,
including for a service started while the database was down."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pipelines.db import dispose_engine
from service.history.store import PredictionHistory
from tests.conftest import Postgres
from tests.service.conftest import (
    LiveServer,
    Trained,
    append_candle,
    make_settings,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RECOVERY_S = 30  # the database chore checks every 5 s and retries a failure within 5 s


@dataclass
class Database:
    """A throwaway PostgreSQL database whose connections can be refused and allowed again."""

    admin: sa.Engine
    name: str
    url: str

    def block(self) -> None:
        """Refuse new connections and end the open ones (the database is "down")."""
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
            )

    def restore(self) -> None:
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


@pytest.fixture
def database(postgres: Postgres) -> Iterator[Database]:
    url = postgres.create("tbml_down")
    db = Database(postgres.admin, str(make_url(url).database), url)
    try:
        yield db
    finally:
        db.restore()
        dispose_engine(url)


def _health(server: LiveServer) -> dict[str, Any]:
    response = server.client.get("/api/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _assert_down_but_serving(server: LiveServer) -> None:
    prediction = server.client.get("/api/predictions/BTC")
    assert prediction.status_code == 200, prediction.text
    assert prediction.json()["modelVersion"] is not None  # the model in memory, not a fallback
    assert server.client.get("/livez").status_code == 200
    ready = server.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["down"] == ["database"]
    assert ready.json()["database"] == "down"
    assert ready.json()["error"] == "not ready: database down"
    health = wait_until(lambda: (b := _health(server))["status"] == "degraded" and b)
    assert health["database"]["state"] == "down"


def _assert_recovered(server: LiveServer) -> dict[str, Any]:
    wait_until(lambda: server.client.get("/readyz").status_code == 200, timeout=RECOVERY_S)
    health = wait_until(
        lambda: (b := _health(server))["database"]["state"] == "up" and b,
        timeout=RECOVERY_S,
    )
    assert health["database"]["migrated"] is True
    return health


def test_database_down_keeps_predictions_and_recovers_without_restart(
    database: Database, serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained, database_url=database.url)
    server = serve(settings)
    assert server.client.get("/readyz").status_code == 200
    assert server.client.get("/api/predictions/BTC").status_code == 200
    assert server.state.history_writer.flush(timeout=10)
    history = PredictionHistory(url=database.url)
    before = history.count(pair="BTC")

    database.block()
    append_candle(settings, "BTC")  # a new candle: a new prediction, a new history row
    _assert_down_but_serving(server)
    assert not server.state.history_writer.flush(timeout=1)  # buffered, not lost

    database.restore()
    _assert_recovered(server)
    assert server.state.history_writer.flush(timeout=RECOVERY_S)
    assert history.count(pair="BTC") > before  # the row made during the outage is stored
    assert server.state.history_writer.dropped == 0


def test_service_started_while_the_database_is_down_serves_and_migrates_once_it_is_back(
    database: Database, serve: Callable[..., LiveServer], tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained, database_url=database.url)
    database.block()
    server = serve(settings)  # before: migrate() failed and the service did not start
    _assert_down_but_serving(server)
    assert _health(server)["database"]["migrated"] is False

    database.restore()
    _assert_recovered(server)
    assert server.state.history_writer.flush(timeout=RECOVERY_S)
    assert PredictionHistory(url=database.url).count(pair="BTC") >= 1
