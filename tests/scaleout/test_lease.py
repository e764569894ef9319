"""The dispatch lease on PostgreSQL during a slow takeover: renewed, and held by one only.

A scheduler that takes the lease with jobs waiting first warms up MLflow and recovers orphaned
trainings; against a tracking server that is slow to answer, that takes longer than the lease
lasts. The lease must go on being renewed meanwhile, or a second worker (started by mistake)
takes it over too.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.db import migrate
from pipelines.queue import lease
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.runtime import TrainingScheduler
from pipelines.settings import Settings
from tests.pipelines.queue.conftest import make_settings, wait_until
from tests.scaleout.conftest import Postgres

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SILENCE_S = 4.0  # how long a request to the silent tracking server waits before timing out
LEASE_MS = 600


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An HTTP address that accepts connections and never answers (a hung tracking server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def slow_tracking_settings(
    postgres: Postgres, silent_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(SILENCE_S)))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = make_settings(
        tmp_path,
        database_url=postgres.create("tbml_lease"),
        tracking_uri=silent_server,
        scheduler_lease_ms=LEASE_MS,
    )
    migrate(settings)
    # A job waits (so the takeover warms up MLflow), behind a paused dispatch (so nothing
    # starts a training against the silent server).
    queue = TrainingQueue(settings)
    queue.emergency_stop(reason="test: keep the waiting job waiting")
    queue.enqueue(pair="BTC")
    return settings


def test_a_slow_takeover_keeps_the_lease_renewed_and_the_standby_out(
    slow_tracking_settings: Settings,
) -> None:
    settings = slow_tracking_settings
    url = settings.database_url
    first = TrainingScheduler(settings)
    second = TrainingScheduler(settings)
    starting = threading.Thread(target=first.start)
    started_at = time.monotonic()
    starting.start()  # returns once its takeover (stuck on the silent server) is done
    try:
        wait_until(lambda: lease.current(url).holder == first.worker_id, timeout=30)
        second.start()
        holders: list[tuple[str | None, bool]] = []
        while starting.is_alive():
            state = lease.current(url)
            holders.append((state.holder, state.expires_at > now_ms()))
            assert not second.holds_lease
            time.sleep(0.05)
        took = time.monotonic() - started_at

        assert took > 2 * LEASE_MS / 1000  # the takeover did outlast the lease several times
        assert set(holders) == {(first.worker_id, True)}
        assert first.holds_lease
        time.sleep(3 * LEASE_MS / 1000)
        assert lease.current(url).holder == first.worker_id
        assert not second.holds_lease
    finally:
        starting.join(timeout=60)
        second.shutdown()
        first.shutdown()


def test_on_postgres_the_lease_expires_by_the_database_clock(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, database_url=postgres.create("tbml_lease_clock"))
    migrate(settings)
    url = settings.database_url
    assert lease.acquire(url, holder="a", ttl_ms=60_000)
    skewed = time.time() + 3600  # a host an hour ahead must not see a's lease as expired
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: skewed)
        assert not lease.acquire(url, holder="b", ttl_ms=60_000)
    assert lease.acquire(url, holder="a", ttl_ms=300)
    expires_at = lease.current(url).expires_at
    assert abs(expires_at - (lease.database_now(url) + 300)) < 5_000
    assert not lease.acquire(url, holder="b", ttl_ms=60_000)
    while lease.database_now(url) <= expires_at:
        time.sleep(0.05)
    assert lease.acquire(url, holder="b", ttl_ms=60_000)
    assert lease.current(url).holder == "b"
