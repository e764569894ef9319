"""From table rows to the API's views: a job, the queue status, can-train."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipelines.queue import store
from pipelines.queue.clock import minutes_left
from pipelines.queue.schemas import (
    ActiveJob,
    ActiveJobs,
    AttemptView,
    CanTrain,
    CooldownView,
    History,
    JobView,
    PolicyDecisionView,
    PolicyStatus,
    QueuedJob,
    QueuedJobs,
    QueueStatus,
)
from pipelines.queue.tables import TRAINING, PolicyDecision, TrainingAttempt, TrainingJob
from pipelines.settings import Settings

ALLOWED = "Can start immediately"
COOLDOWN = "Cooldown active"
PAUSED = "Training paused by emergency stop"


def attempt_view(row: TrainingAttempt) -> AttemptView:
    """One attempt as the API shows it."""
    return AttemptView(
        attempt=row.number,
        run_id=row.run_id,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outcome=row.outcome,
        exit_code=row.exit_code,
        error=row.error,
    )


def job_view(job: TrainingJob, attempts: list[TrainingAttempt], *, now: int) -> JobView:
    """A job and all its attempts."""
    duration: int | None = None
    if job.started_at is not None:
        duration = (job.finished_at if job.finished_at is not None else now) - job.started_at
    return JobView(
        id=job.id,
        pair=job.pair,
        model_type=job.model_type,
        status=job.status,
        priority=job.priority,
        params=dict(job.params),
        requested_by=job.requested_by,
        reason=job.reason,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        queued_at=job.queued_at,
        available_at=job.available_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        duration=duration,
        run_id=job.run_id,
        registered_model=job.registered_model,
        registered_version=job.registered_version,
        promotion=job.promotion,
        promotion_reason=job.promotion_reason,
        beats_baseline=job.beats_baseline,
        error=job.error,
        cancel_reason=job.cancel_reason,
        cancel_requested=job.cancel_requested_at is not None,
        attempt_history=[attempt_view(row) for row in attempts],
        data_end=job.data_end,
    )


def load_job_view(session: Session, job: TrainingJob, *, now: int) -> JobView:
    """`job_view` with the attempts read from the database."""
    return job_view(job, store.attempts_of(session, [job.id])[job.id], now=now)


def queue_status(
    session: Session, *, settings: Settings, now: int, history_limit: int
) -> QueueStatus:
    """Everything `GET /api/training/queue` shows."""
    live = store.snapshot(session, now=now)
    active = [
        ActiveJob(
            id=job.id,
            pair=job.pair,
            model_type=job.model_type,
            status=job.status,
            started_at=job.started_at or now,
            duration=now - (job.started_at or now),
            attempt=job.attempts,
            run_id=job.run_id,
            cancel_requested=job.cancel_requested_at is not None,
            epochs=_epochs(dict(job.params), settings),
        )
        for job in live.training
    ]
    queued = []
    for position, job in enumerate(live.queued, start=1):
        cooldown = live.cooldowns.get((job.pair, job.model_type))
        queued.append(
            QueuedJob(
                id=job.id,
                pair=job.pair,
                model_type=job.model_type,
                priority=job.priority,
                queue_position=position,
                queued_for=now - job.queued_at,
                queued_at=job.queued_at,
                available_at=job.available_at,
                attempts=job.attempts,
                requested_by=job.requested_by,
                cooldown_remaining_minutes=(
                    minutes_left(cooldown.ends_at, now) if cooldown is not None else None
                ),
                reason=job.reason,
            )
        )
    total, recent = store.history(session, limit=history_limit)
    attempts = store.attempts_of(session, [job.id for job in recent])
    return QueueStatus(
        active=ActiveJobs(count=len(active), jobs=active),
        queued=QueuedJobs(count=len(queued), jobs=queued),
        history=History(
            total=total, recent=[job_view(job, attempts[job.id], now=now) for job in recent]
        ),
        cooldowns=[
            CooldownView(
                pair=row.pair,
                model_type=row.model_type,
                cooldown_remaining_minutes=minutes_left(row.ends_at, now),
                ends_at=row.ends_at,
            )
            for row in sorted(live.cooldowns.values(), key=lambda row: (row.pair, row.model_type))
        ],
        paused=live.paused,
        paused_reason=live.paused_reason,
        max_concurrent=settings.max_concurrent_training,
        cooldown_minutes=settings.training_cooldown_ms / 60_000,
        policy=policy_status(session, settings=settings),
    )


def policy_status(session: Session, *, settings: Settings) -> PolicyStatus:
    """Whether the retraining policy is on, and its latest decision per pair and model type."""
    rows = session.scalars(
        select(PolicyDecision).order_by(PolicyDecision.pair, PolicyDecision.model_type)
    )
    return PolicyStatus(
        enabled=settings.retrain_policy,
        decisions=[
            PolicyDecisionView(
                pair=row.pair,
                model_type=row.model_type,
                decided_at=row.decided_at,
                action=row.action,
                requested_by=row.requested_by,
                reason=row.reason,
                job_id=row.job_id,
            )
            for row in rows
        ],
    )


def can_train(session: Session, *, pair: str, model_type: str, priority: int, now: int) -> CanTrain:
    """Whether a training of this pair and model type (at `priority`) would start now, and why.

    Jobs of equal priority that are already waiting go first (oldest first).
    """
    live = store.snapshot(session, now=now)
    if live.paused:
        reason = live.paused_reason
        return CanTrain(allowed=False, reason=f"{PAUSED}: {reason}" if reason else PAUSED)
    cooldown = live.cooldowns.get((pair, model_type))
    if cooldown is not None:
        return CanTrain(
            allowed=False,
            reason=COOLDOWN,
            cooldown_remaining_minutes=minutes_left(cooldown.ends_at, now),
        )
    existing = live.active_for(pair, model_type)
    if existing is not None:
        state = "training" if existing.status == TRAINING else "queued"
        return CanTrain(allowed=False, reason=f"Already {state} as job {existing.id}")
    if live.training:
        return CanTrain(
            allowed=False, reason=f"Another training is running (job {live.training[0].id})"
        )
    ahead = [
        job
        for job in live.queued
        if job.priority <= priority
        and job.available_at <= now
        and (job.pair, job.model_type) not in live.cooldowns
    ]
    if ahead:
        return CanTrain(
            allowed=False, reason=f"Queued behind {len(ahead)} job{'s' if len(ahead) > 1 else ''}"
        )
    return CanTrain(allowed=True, reason=ALLOWED)


def _epochs(params: dict[str, object], settings: Settings) -> int | None:
    """The most epochs a job's training runs: its `epochs` parameter, else ML_EPOCHS."""
    value = params.get("epochs", settings.epochs)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
