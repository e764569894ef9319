"""The queue's retention: ended jobs, their attempts and training logs older than
`ML_JOB_RETENTION_HOURS` are deleted. A queued or training job, and its logs, are never touched.

`prune(settings, now=...)` is meant to run periodically in the scheduler that holds the lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from pipelines.db import read_session
from pipelines.queue import runner, transitions
from pipelines.queue.tables import ACTIVE_STATUSES, TrainingJob
from pipelines.settings import Settings

logger = logging.getLogger(__name__)

_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Pruned:
    """What one pass deleted."""

    jobs: list[str]
    logs: list[str]


def prune(settings: Settings, *, now: int) -> Pruned:
    """Delete ended jobs that finished, and logs last written, before the retention window.

    Args:
        settings: Its database, data directory and `job_retention_hours`.
        now: Epoch ms.
    """
    cutoff = now - int(settings.job_retention_hours * _HOUR_MS)
    jobs = transitions.delete_ended_jobs(settings.database_url, finished_before=cutoff)
    with read_session(settings.database_url) as session:
        active = set(
            session.scalars(select(TrainingJob.id).where(TrainingJob.status.in_(ACTIVE_STATUSES)))
        )
    logs = []
    folder = runner.log_dir(settings)
    for path in sorted(folder.glob("*.log")) if folder.is_dir() else []:
        job_id = path.name.split(".attempt-", 1)[0]
        if job_id in active or path.stat().st_mtime * 1000 >= cutoff:
            continue
        path.unlink(missing_ok=True)
        logs.append(path.name)
    if jobs or logs:
        logger.info("retention: deleted %d job(s) and %d log(s)", len(jobs), len(logs))
    return Pruned(jobs=jobs, logs=logs)
