"""The service database's alembic migrations on PostgreSQL: unchanged, and safe to run at once.

API replicas and the worker all run `alembic upgrade head` when they start, usually at the same
moment on a new database; SQLite serialises them by itself, PostgreSQL needs the advisory lock
that `pipelines.db.migrate` takes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.command import downgrade, upgrade
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from pipelines.db import ALEMBIC_INI, get_engine, migrate
from pipelines.settings import PROJECT_ROOT
from tbml.schema import metadata
from tests.pipelines.queue.conftest import make_settings
from tests.scaleout.conftest import Postgres

pytestmark = pytest.mark.postgres

TABLES = {
    "training_jobs",
    "training_attempts",
    "training_cooldowns",
    "queue_control",
    "scheduler_leases",
    "apscheduler_jobs",
    "prediction_history",
    "policy_decisions",
    "alembic_version",
}


def _head() -> str:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _ours(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # APScheduler's table is created by the migration but defined by APScheduler.
    table = getattr(obj, "table", obj)
    return getattr(table, "name", name) != "apscheduler_jobs"


def test_migrations_bring_postgres_to_the_models_schema(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.create("tbml_migrate")
    migrate(make_settings(tmp_path, database_url=url))

    engine = get_engine(url)
    assert set(sa.inspect(engine).get_table_names()) == TABLES
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": _ours}
        )
        assert compare_metadata(context, metadata()) == []
        assert context.get_current_revision() == _head()
        assert connection.exec_driver_sql("SELECT count(*) FROM queue_control").scalar() == 1
        assert connection.exec_driver_sql("SELECT count(*) FROM scheduler_leases").scalar() == 1


def test_migrations_go_down_to_base_and_up_again_on_postgres(
    postgres: Postgres, tmp_path: Path
) -> None:
    url = postgres.create("tbml_migrate")
    migrate(make_settings(tmp_path, database_url=url))
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    config.attributes["configure_logger"] = False
    engine = get_engine(url)

    with engine.begin() as connection:
        config.attributes["connection"] = connection
        downgrade(config, "base")
    assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        upgrade(config, "head")
    assert set(sa.inspect(engine).get_table_names()) == TABLES


# Each process imports everything first, then waits for the go file, so that their
# migrations start within milliseconds of each other.
_MIGRATE = """
import sys, time
from pathlib import Path
from pipelines.db import migrate
from pipelines.settings import Settings
import alembic.command, pipelines.queue.tables, service.history.tables
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
migrate(Settings(_env_file=None, database_url=sys.argv[1]))
"""


@pytest.mark.slow
def test_processes_starting_together_all_migrate_a_new_postgres_database(
    postgres: Postgres, tmp_path: Path
) -> None:
    url = postgres.create("tbml_migrate")
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, url, str(go)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(6)
    ]
    for child in children:
        assert child.stdout is not None
        ready = child.stdout.readline()
        assert ready == b"ready\n", ready + child.stdout.read()
    go.touch()
    outputs = [child.communicate(timeout=120)[0].decode(errors="replace") for child in children]

    assert [child.returncode for child in children] == [0] * 6, "\n".join(outputs)[-4000:]
    with get_engine(url).connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
            (_head(),)
        ]
        assert connection.exec_driver_sql("SELECT count(*) FROM queue_control").scalar() == 1
