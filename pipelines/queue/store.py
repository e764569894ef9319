"""Reads of the queue's tables, shared by the domain API, the dispatcher and the views."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.engine import Result
from sqlalchemy.orm import Session

from pipelines.queue.tables import (
    DISPATCH_CONTROL,
    QUEUED,
    TERMINAL_STATUSES,
    TRAINING,
    QueueControl,
    TrainingAttempt,
    TrainingCooldown,
    TrainingJob,
)


def rowcount(result: Result[object]) -> int:
    """Rows an UPDATE or DELETE matched (SQLAlchemy returns a CursorResult for those)."""
    return int(getattr(result, "rowcount", 0))


def get_job(session: Session, job_id: str) -> TrainingJob | None:
    """The job with this id, if any."""
    return session.get(TrainingJob, job_id)


def find_active(session: Session, *, pair: str, model_type: str) -> TrainingJob | None:
    """The queued or training job of a pair and model type (the database allows one)."""
    return session.scalars(
        select(TrainingJob).where(
            TrainingJob.pair == pair,
            TrainingJob.model_type == model_type,
            TrainingJob.status.in_((QUEUED, TRAINING)),
        )
    ).first()


def training_jobs(session: Session) -> list[TrainingJob]:
    """Jobs whose status is `training` (the database allows at most one)."""
    return list(session.scalars(select(TrainingJob).where(TrainingJob.status == TRAINING)))


def queued_in_order(session: Session) -> list[TrainingJob]:
    """Queued jobs in dispatch order: highest priority (1) first, then the oldest."""
    return list(
        session.scalars(
            select(TrainingJob)
            .where(TrainingJob.status == QUEUED)
            .order_by(TrainingJob.priority, TrainingJob.queued_at, TrainingJob.id)
        )
    )


def active_cooldowns(session: Session, *, now: int) -> dict[tuple[str, str], TrainingCooldown]:
    """Cooldowns still running at `now`, by (pair, model type)."""
    rows = session.scalars(select(TrainingCooldown).where(TrainingCooldown.ends_at > now))
    return {(row.pair, row.model_type): row for row in rows}


def pause_state(session: Session) -> tuple[bool, str | None]:
    """Whether dispatch is paused (emergency stop), and why."""
    control = session.get(QueueControl, DISPATCH_CONTROL)
    if control is None:
        return False, None
    return bool(control.paused), control.reason


def history(session: Session, *, limit: int) -> tuple[int, list[TrainingJob]]:
    """How many jobs have ended, and the `limit` most recent of them."""
    ended = TrainingJob.status.in_(TERMINAL_STATUSES)
    total = session.scalar(select(func.count()).select_from(TrainingJob).where(ended)) or 0
    recent = list(
        session.scalars(
            select(TrainingJob)
            .where(ended)
            .order_by(TrainingJob.finished_at.desc(), TrainingJob.id.desc())
            .limit(limit)
        )
    )
    return int(total), recent


def attempts_of(session: Session, job_ids: Iterable[str]) -> dict[str, list[TrainingAttempt]]:
    """Every attempt of each job, oldest first."""
    ids = list(job_ids)
    found: dict[str, list[TrainingAttempt]] = {job_id: [] for job_id in ids}
    if not ids:
        return found
    rows = session.scalars(
        select(TrainingAttempt)
        .where(TrainingAttempt.job_id.in_(ids))
        .order_by(TrainingAttempt.job_id, TrainingAttempt.number)
    )
    for row in rows:
        found[row.job_id].append(row)
    return found


def select_next(session: Session, *, now: int) -> TrainingJob | None:
    """The job to start now: highest priority, then oldest, among those free to start.

    Free means its retry backoff has ended and its pair and model type are not cooling down.
    """
    cooling = active_cooldowns(session, now=now)
    for job in queued_in_order(session):
        if job.available_at <= now and (job.pair, job.model_type) not in cooling:
            return job
    return None


@dataclass(frozen=True)
class Snapshot:
    """The live part of the queue, read in three queries: what can-train and status need."""

    paused: bool
    paused_reason: str | None
    cooldowns: dict[tuple[str, str], TrainingCooldown]
    training: list[TrainingJob]
    queued: list[TrainingJob]

    def active_for(self, pair: str, model_type: str) -> TrainingJob | None:
        """The queued or training job of a pair and model type, if any."""
        for job in (*self.training, *self.queued):
            if (job.pair, job.model_type) == (pair, model_type):
                return job
        return None


def snapshot(session: Session, *, now: int) -> Snapshot:
    """Pause state, active cooldowns and every queued or training job (queued in order)."""
    paused, reason = pause_state(session)
    active = session.scalars(
        select(TrainingJob)
        .where(TrainingJob.status.in_((QUEUED, TRAINING)))
        .order_by(TrainingJob.priority, TrainingJob.queued_at, TrainingJob.id)
    ).all()
    return Snapshot(
        paused=paused,
        paused_reason=reason,
        cooldowns=active_cooldowns(session, now=now),
        training=[job for job in active if job.status == TRAINING],
        queued=[job for job in active if job.status == QUEUED],
    )
