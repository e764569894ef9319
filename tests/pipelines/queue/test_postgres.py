"""The same rules on PostgreSQL: migrations, the lease, duplicates, one training at a time.

Runs against the server on 127.0.0.1:5432 (or ML_TEST_POSTGRES_URL) in a database of its own,
created and dropped here; skipped, saying why, when no server answers.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from pipelines.db import dispose_engine, get_engine, migrate
from pipelines.queue import lease, transitions
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.errors import DuplicateJobError
from pipelines.settings import Settings
from tests.pipelines.queue.conftest import make_settings

pytestmark = pytest.mark.postgres

SERVER_URL = os.environ.get(
    "ML_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings whose service database is a fresh PostgreSQL database, dropped afterwards."""
    admin = sa.create_engine(
        SERVER_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"tbml_queue_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as error:
        admin.dispose()
        pytest.skip(f"no PostgreSQL server answers at {SERVER_URL}: {error.orig}")
    url = make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    settings = make_settings(tmp_path, database_url=url)
    migrate(settings)
    try:
        yield settings
    finally:
        dispose_engine(url)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


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
