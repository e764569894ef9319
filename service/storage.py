"""What `/api/storage/*` reports and does: sizes and counts, a checkpoint, retention cleanup."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select, table, text
from sqlalchemy.engine import make_url

from pipelines.db import get_engine, is_sqlite, read_session
from pipelines.redact import describe_error
from pipelines.tracking import registered_model_name
from service.state import ServiceState

logger = logging.getLogger(__name__)

BACKUPS_KEPT = 5
# `/api/storage/stats` walks `mlruns/` and the model cache and asks the registry for every
# model's versions: seconds on a large store. Those parts are computed at most once per this
# many seconds (and by one request at a time), so asking repeatedly stays cheap; row counts,
# caches and the queue are read fresh every time.
SLOW_STATS_TTL_S = 30.0
_slow_lock = threading.Lock()


def _dir_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under `path`; (0, 0) if it does not exist."""
    size = files = 0
    if path.is_dir():
        for item in path.rglob("*"):
            if item.is_file():
                files += 1
                size += item.stat().st_size
    return size, files


def _sqlite_path(url: str) -> Path | None:
    if not is_sqlite(url):
        return None
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def _database(url: str) -> dict[str, Any]:
    engine = get_engine(url)
    names = inspect(engine).get_table_names()
    with read_session(url) as session:
        rows = {
            name: int(session.scalar(select(func.count()).select_from(table(name))) or 0)
            for name in sorted(names)
            if name != "alembic_version"
        }
        path = _sqlite_path(url)
        if path is not None:
            files = (path, Path(f"{path}-wal"))
            size = sum(p.stat().st_size for p in files if p.exists())
        else:
            size = int(session.scalar(text("SELECT pg_database_size(current_database())")) or 0)
    return {
        "dialect": engine.dialect.name,
        "url": make_url(url).render_as_string(hide_password=True),
        "sizeBytes": size,
        "tables": rows,
    }


def _registry(state: ServiceState) -> dict[str, Any]:
    summary = state.models.reader.summary()
    return {
        "registeredModels": summary.registered_models,
        "versions": summary.versions,
        "production": summary.production,
    }


def _slow_stats(state: ServiceState) -> dict[str, Any]:
    """Directory sizes and registry counts, cached for `SLOW_STATS_TTL_S` per service."""
    with _slow_lock:
        if state.slow_stats and time.monotonic() - state.slow_stats_at < SLOW_STATS_TTL_S:
            return state.slow_stats
        mlruns = _dir_size(state.settings.artifact_root)
        cache = _dir_size(state.models.cache_dir)
        try:
            registry: dict[str, Any] = _registry(state)
        except Exception as exc:  # the registry being down must not hide the rest
            registry = {"error": f"registry unreachable: {describe_error(exc)}"}
        state.slow_stats = {"mlruns": mlruns, "cache": cache, "registry": registry}
        state.slow_stats_at = time.monotonic()
        return state.slow_stats


def storage_stats(state: ServiceState) -> dict[str, Any]:
    settings = state.settings
    slow = _slow_stats(state)
    mlruns_bytes, mlruns_files = slow["mlruns"]
    cache_bytes, cache_files = slow["cache"]
    registry = slow["registry"]
    return {
        "storage": {
            "database": _database(settings.database_url),
            "mlruns": {
                "path": str(settings.artifact_root),
                "sizeBytes": mlruns_bytes,
                "files": mlruns_files,
            },
            "registry": registry,
            "modelCache": {
                "path": str(state.models.cache_dir),
                "sizeBytes": cache_bytes,
                "files": cache_files,
                "loaded": [
                    {"pair": m.pair, "modelType": m.model_type, "version": m.version}
                    for m in state.models.all()
                ],
            },
            "predictions": {"count": state.history.count()},
        },
        "performance": {
            "predictionCacheSize": len(state.prediction_cache),
            "featureCacheSize": len(state.feature_cache) + len(state.feature_view_cache),
            "modelStatusCacheSize": len(state.model_status_cache),
            "cacheHits": state.cache_hits(),
            "cacheMisses": state.cache_misses(),
        },
        "trainingQueue": state.queue.queue_status(history_limit=0).queue.to_json_dict(),
    }


def checkpoint(state: ServiceState) -> dict[str, Any]:
    """SQLite: fold the WAL into the database file and write a consistent backup copy."""
    url = state.settings.database_url
    path = _sqlite_path(url)
    if path is None:
        return {
            "saved": True,
            "database": get_engine(url).dialect.name,
            "note": "the server persists every commit; use its own backup tools (pg_dump)",
        }
    busy, log, moved = _wal_checkpoint(url)
    backups = state.settings.data_dir / "backups"
    backups.mkdir(parents=True, exist_ok=True)
    target = backups / f"service-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.db"
    source = sqlite3.connect(path)
    try:
        destination = sqlite3.connect(target)
        try:
            source.backup(destination)
        finally:
            destination.close()
    finally:
        source.close()
    removed = _prune_backups(backups)
    return {
        "saved": True,
        "database": "sqlite",
        "checkpoint": {"busy": bool(busy), "walPages": log, "checkpointedPages": moved},
        "backup": {"path": str(target), "sizeBytes": target.stat().st_size},
        "backupsRemoved": removed,
    }


def _wal_checkpoint(url: str) -> tuple[int, int, int]:
    """`PRAGMA wal_checkpoint(TRUNCATE)`: (busy, WAL pages, pages checkpointed).

    On a raw connection outside any transaction: SQLite refuses to checkpoint inside one, and
    the engine begins every SQLAlchemy transaction with BEGIN IMMEDIATE.
    """
    raw = get_engine(url).raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = cursor.fetchone()
            if row is None:
                raise RuntimeError("PRAGMA wal_checkpoint answered nothing")
            busy, log, moved = row
        finally:
            cursor.close()
    finally:
        raw.close()
    return int(busy), int(log), int(moved)


def _prune_backups(folder: Path) -> int:
    old = sorted(folder.glob("service-*.db"))[:-BACKUPS_KEPT]
    for path in old:
        path.unlink(missing_ok=True)
    return len(old)


def cleanup(state: ServiceState, *, max_age_hours: float) -> dict[str, Any]:
    """Drop old history and the local copies of versions that are neither served nor production.

    A version that is production in the registry is never touched, served or not; without the
    registry no model copy is deleted at all.
    """
    deleted = state.history.cleanup(max_age_hours=max_age_hours)
    keep: set[tuple[str, str]] = set()
    try:
        for pair, model_type in state.models.slots:
            info = state.models.reader.production(registered_model_name(pair, model_type))
            if info is not None:
                keep.add((info.name, info.version))
    except Exception as exc:
        logger.warning("cleanup: registry unreachable (%s); keeping every model copy", exc)
        return {
            "maxAgeHours": max_age_hours,
            "predictionsDeleted": deleted,
            "modelCopiesDeleted": [],
            "note": f"registry unreachable, model copies kept: {exc}",
        }
    removed = state.models.prune_copies(keep=keep)
    kept = keep | {(m.name, m.version) for m in state.models.all()}
    return {
        "maxAgeHours": max_age_hours,
        "predictionsDeleted": deleted,
        "modelCopiesDeleted": removed,
        "kept": sorted(f"{n}/{v}" for n, v in kept),
    }


# How often the service applies its retention (`retention`).
RETENTION_INTERVAL_S = 3600.0


def retention(state: ServiceState) -> dict[str, Any]:
    """The service's scheduled retention: `cleanup` with `ML_STORAGE_MAX_AGE_HOURS`.

    Prediction history older than that and model copies neither served nor production go;
    the queue's own rows and logs are pruned by `pipelines.queue.retention`.
    """
    result = cleanup(state, max_age_hours=state.settings.storage_max_age_hours)
    logger.info(
        "retention: %s prediction(s), %d model copy(ies) deleted",
        result["predictionsDeleted"],
        len(result["modelCopiesDeleted"]),
    )
    return result
