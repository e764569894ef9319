"""The service database: alembic owns the schema, SQLite runs in WAL with waiting writers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pipelines.db import (
    _Engines,
    dispose_engine,
    get_engine,
    migrate,
    read_session,
    write_session,
)
from pipelines.settings import PROJECT_ROOT, Settings
from tbml.schema import metadata

QUEUE_TABLES = {
    "training_jobs",
    "training_attempts",
    "training_cooldowns",
    "queue_control",
    "scheduler_leases",
    "apscheduler_jobs",
}


def test_migrate_creates_every_table_at_head(settings: Settings) -> None:
    migrate(settings)
    engine = get_engine(settings.database_url)
    assert set(sa.inspect(engine).get_table_names()) >= QUEUE_TABLES
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        seeded = connection.exec_driver_sql("SELECT name, paused FROM queue_control").all()
    assert seeded == [("dispatch", 0)]


def test_migrate_twice_changes_nothing(settings: Settings) -> None:
    migrate(settings)
    migrate(settings)
    with get_engine(settings.database_url).connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM queue_control").scalar() == 1
        assert connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1


def test_migrations_match_the_models(settings: Settings) -> None:
    migrate(settings)

    def ours(
        obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
    ) -> bool:
        # APScheduler's table is created by the migration but defined by APScheduler.
        table = getattr(obj, "table", obj)
        return getattr(table, "name", name) != "apscheduler_jobs"

    with get_engine(settings.database_url).connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": ours}
        )
        assert compare_metadata(context, metadata()) == []


def test_alembic_command_line_takes_the_url_from_settings(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "service.db"
    env = {**os.environ, "ML_DATABASE_URL": f"sqlite:///{database}"}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        assert "training_jobs" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_the_tables(settings: Settings) -> None:
    from alembic.command import downgrade
    from alembic.config import Config

    migrate(settings)
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    with get_engine(settings.database_url).begin() as connection:
        config.attributes["connection"] = connection
        downgrade(config, "base")
    names = set(sa.inspect(get_engine(settings.database_url)).get_table_names())
    assert not QUEUE_TABLES & names


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(settings: Settings) -> None:
    migrate(settings)
    with get_engine(settings.database_url).connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        busy_ms = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
        # Long enough to wait out a writer, well under the dispatch lease it must not outlast.
        assert 1_000 <= busy_ms < settings.scheduler_lease_ms / 3
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_concurrent_read_then_write_transactions_wait_instead_of_failing(
    settings: Settings,
) -> None:
    # Each thread reads a counter and writes it back + 1: with deferred transactions SQLite
    # would refuse some upgrades with "database is locked"; with BEGIN IMMEDIATE they queue.
    migrate(settings)
    url = settings.database_url
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            with write_session(url) as session:
                value = session.execute(
                    sa.text("SELECT changed_at FROM queue_control WHERE name = 'dispatch'")
                ).scalar_one()
                session.execute(
                    sa.text("UPDATE queue_control SET changed_at = :v WHERE name = 'dispatch'"),
                    {"v": value + 1},
                )
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=bump) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with read_session(url) as session:
        final = session.execute(
            sa.text("SELECT changed_at FROM queue_control WHERE name = 'dispatch'")
        ).scalar_one()
    assert final == 40  # no lost update: the transactions ran one after another


def test_an_engine_leaving_the_cache_has_its_pooled_connections_closed(tmp_path: Path) -> None:
    engines = _Engines(size=2)
    urls = [f"sqlite:///{tmp_path / f'db{i}.db'}" for i in range(3)]
    first = engines.get(urls[0]).engine
    with first.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    pool = first.pool
    assert pool.checkedin() == 1  # the connection went back to the pool, open
    engines.get(urls[1])
    engines.get(urls[0])  # used again: the least recently used is now urls[1]
    engines.get(urls[2])
    assert pool.checkedin() == 1  # urls[0] stayed
    engines.get(urls[1])  # evicts urls[0]
    assert pool.checkedin() == 0


def test_dispose_engine_closes_the_shared_pool_and_forgets_the_engine(settings: Settings) -> None:
    migrate(settings)
    engine = get_engine(settings.database_url)
    with read_session(settings.database_url) as session:
        session.execute(sa.text("SELECT 1"))
    pool = engine.pool
    assert pool.checkedin() >= 1
    dispose_engine(settings.database_url)
    assert pool.checkedin() == 0
    assert get_engine(settings.database_url) is not engine
    dispose_engine("sqlite:///never-opened.db")  # a URL with no engine is a no-op
