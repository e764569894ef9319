"""The same rules on PostgreSQL: migrations, the lease, duplicates, one training at a time.

Runs against the server on 127.0.0.1:5432 (or ML_TEST_POSTGRES_URL) in a database of its own
(tests.conftest's `postgres`); skipped, saying why, when no server answers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pipelines.db import get_engine, migrate
from pipelines.queue import lease, transitions
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.errors import DuplicateJobError
from pipelines.settings import Settings
from tests.conftest import Postgres
from tests.pipelines.queue.conftest import make_settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_settings(tmp_path: Path, postgres: Postgres) -> Settings:
    """Settings whose service database is a fresh PostgreSQL database (dropped at the end)."""
    settings = make_settings(tmp_path, database_url=postgres.create("tbml_queue"))
    migrate(settings)
    return settings


def test_migrations_create_the_queue_tables_on_postgres(pg_settings: Settings) -> None:
    names = set(sa.inspect(get_engine(pg_settings.database_url)).get_table_names())
    assert {"training_jobs", "training_attempts", "scheduler_leases", "apscheduler_jobs"} <= names


def test_fifty_concurrent_enqueues_create_one_job_on_postgres(pg_settings: Settings) -> None:
    queue = TrainingQueue(pg_settings)
    accepted: list[str] = []
    rejected: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(50)

    def request() -> None:
        barrier.wait()
        try:
            accepted.append(queue.enqueue(pair="BTC").job_id)
        except DuplicateJobError as error:
            rejected.append(error.existing.id)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=request) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(accepted) == 1
    assert set(rejected) == set(accepted)
    assert len(rejected) == 49


def test_the_lease_has_one_holder_on_postgres(pg_settings: Settings) -> None:
    url = pg_settings.database_url
    now = now_ms()
    winners: list[str] = []
    barrier = threading.Barrier(20)

    def race(name: str) -> None:
        barrier.wait()
        if lease.acquire(url, holder=name, ttl_ms=1_000, now=now):
            winners.append(name)

    threads = [threading.Thread(target=race, args=(f"s{i}",)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert not lease.acquire(url, holder="late", ttl_ms=1_000, now=now + 500)
    assert lease.acquire(url, holder="late", ttl_ms=1_000, now=now + 1_001)  # expired


def test_one_training_at_a_time_is_enforced_by_postgres(pg_settings: Settings) -> None:
    url = pg_settings.database_url
    queue = TrainingQueue(pg_settings)
    first = queue.enqueue(pair="BTC").job_id
    second = queue.enqueue(pair="ETH").job_id
    assert lease.acquire(url, holder="holder", ttl_ms=60_000, now=now_ms())
    assert transitions.claim(url, job_id=first, worker_id="intruder", now=now_ms()) is None
    assert transitions.claim(url, job_id=first, worker_id="holder", now=now_ms()) == 1
    with pytest.raises(IntegrityError):
        transitions.claim(url, job_id=second, worker_id="holder", now=now_ms())
    stopped = queue.emergency_stop()
    assert (stopped.stopped_jobs, stopped.cancelled_jobs) == ([first], [second])
