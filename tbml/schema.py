"""The service database's tables: every module that defines tables on `pipelines.db.Base`.

The list lives here, above the layers, because its modules come from several of them
(`pipelines.queue`, `service.history`); alembic/env.py and the schema tests read it.
"""

from __future__ import annotations

from sqlalchemy import MetaData

from pipelines.db import load_models

TABLE_MODULES: tuple[str, ...] = ("pipelines.queue.tables", "service.history.tables")


def metadata() -> MetaData:
    """The complete metadata of the service database (what `alembic upgrade head` builds)."""
    return load_models(TABLE_MODULES)
