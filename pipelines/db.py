"""The service database: engines, sessions and migrations. Alembic owns the schema.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with `BEGIN
IMMEDIATE`: a writer takes the write lock when it begins, so concurrent writers queue up behind
the busy timeout instead of failing with "database is locked" when a read turns into a write.
Read-only sessions (`read_session`) begin deferred, so WAL readers never wait for writers.
Nothing here is SQLite-only in what it asks of the database: the same code runs on PostgreSQL.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from pipelines.redact import redact
from pipelines.settings import PROJECT_ROOT, Settings

logger = logging.getLogger(__name__)

# Seconds a SQLite connection waits for the write lock before giving up: well under a third of
# the dispatch lease (ML_SCHEDULER_LEASE, 30 s by default), so a lease renewal stuck behind a
# writer fails and retries long before the lease could run out.
SQLITE_BUSY_TIMEOUT_S = 5.0
PG_CONNECT_TIMEOUT_S = 5
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
_READONLY = "tbml_readonly"
# PostgreSQL advisory lock key held while migrating (any constant unique to this application).
MIGRATION_LOCK_KEY = 0x74626D6C  # "tbml"

# Stable constraint names, so later migrations can drop or alter them on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table in the service database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def load_models(modules: Iterable[str]) -> MetaData:
    """Import `modules` (those defining tables on `Base`) and return the metadata they fill.

    The caller names the modules: some sit in layers above this one, which this module never
    imports by name (the complete list is `tbml.schema.TABLE_MODULES`, read by alembic/env.py).
    """
    for module in modules:
        importlib.import_module(module)
    return Base.metadata


def is_sqlite(url: str) -> bool:
    """Whether `url` names a SQLite database."""
    return url.startswith("sqlite")


def create_db_engine(url: str) -> Engine:
    """A new engine for `url`, with the SQLite settings described in the module docstring."""
    if url.startswith("postgresql"):
        # A database that does not answer fails a connection in seconds, never hangs a caller.
        return create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S}
        )
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: object) -> None:
    # Take transaction control away from the sqlite3 module, so `_sqlite_on_begin` decides how
    # each transaction begins (the recipe in SQLAlchemy's pysqlite documentation).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Safe with WAL (a power cut may lose the last commits, never corrupt the file).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    readonly = connection.get_execution_options().get(_READONLY, False)
    connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


class _Engines:
    """The process's engines, one per URL, each with its two sessionmakers.

    Bounded, least recently used first out; an engine leaving the cache is disposed, so its
    pooled connections are closed here rather than dropped for the garbage collector (which
    closes a PostgreSQL connection without telling the server, and warns about it).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, url: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(url)
            if entry is not None:
                self._entries.move_to_end(url)
                return entry
            entry = _Entry(create_db_engine(url))
            self._entries[url] = entry
            evicted = (
                self._entries.popitem(last=False)[1] if len(self._entries) > self.size else None
            )
        if evicted is not None:
            evicted.engine.dispose()
        return entry

    def dispose(self, url: str) -> None:
        with self._lock:
            entry = self._entries.pop(url, None)
        if entry is not None:
            entry.engine.dispose()


class _Entry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        readonly = engine.execution_options(**{_READONLY: True})
        self.write = sessionmaker(engine, expire_on_commit=False)
        self.read = sessionmaker(readonly, expire_on_commit=False)


_ENGINES = _Engines(size=64)


def get_engine(url: str) -> Engine:
    """The process's shared engine for `url` (one connection pool per database)."""
    return _ENGINES.get(url).engine


def dispose_engine(url: str) -> None:
    """Close the pooled connections of `url`'s shared engine and forget it (a no-op if none)."""
    _ENGINES.dispose(url)


@contextmanager
def write_session(url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with _ENGINES.get(url).write.begin() as session:
        yield session


@contextmanager
def read_session(url: str) -> Iterator[Session]:
    """A session for reads only (on SQLite it never takes the write lock)."""
    with _ENGINES.get(url).read() as session:
        yield session


def migrate(settings: Settings, *, url: str | None = None) -> None:
    """Bring the service database (or `url`) to the newest schema: `alembic upgrade head`."""
    from alembic.command import upgrade
    from alembic.config import Config

    target = url or settings.database_url
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    # The caller's logging stays as it is: env.py configures logging only from the alembic CLI.
    config.attributes["configure_logger"] = False
    with get_engine(target).begin() as connection:
        _lock_migrations(connection)
        config.attributes["connection"] = connection
        upgrade(config, "head")
    logger.debug("service database at head: %s", redact(target))


def _lock_migrations(connection: Connection) -> None:
    """Make concurrent `migrate()` calls on one PostgreSQL database wait for each other.

    API replicas and the worker all migrate on start, often at the same moment. SQLite
    serialises them already (`BEGIN IMMEDIATE` takes the write lock). PostgreSQL would run two
    `CREATE TABLE`s side by side and fail one of them, so the migration's transaction first
    takes an advisory lock, released when it commits; the next one then finds the schema at
    head and does nothing.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
