"""Every write to the queue's state: a job's life from insert to its end, pauses, cooldowns.

The domain API (enqueue, cancel, emergency stop, resume, clear cooldowns) and the dispatcher
(claim, launch, finish) change the tables only through these functions. Each is one
transaction and a conditional UPDATE: a job moves only from the state the caller believes it
is in, and (while training) only by the scheduler that started it. A change that matches no
row returns False and the caller drops its view of the job: someone else (a successor
scheduler, an operator) already moved it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from pipelines.db import write_session
from pipelines.queue.errors import QueueFullError
from pipelines.queue.lease import db_now_ms
from pipelines.queue.store import rowcount
from pipelines.queue.tables import (
    CANCELLED,
    DISPATCH_CONTROL,
    DISPATCH_LEASE,
    FAILED,
    INTERRUPTED,
    QUEUED,
    SUCCEEDED,
    TERMINAL_STATUSES,
    TRAINING,
    QueueControl,
    SchedulerLease,
    TrainingAttempt,
    TrainingCooldown,
    TrainingJob,
)
from pipelines.tracking import RunReport


@dataclass(frozen=True)
class Ending:
    """How an attempt ended, for `finish_attempt`."""

    outcome: str
    exit_code: int | None = None
    error: str | None = None


def insert_job(
    url: str,
    *,
    job_id: str,
    pair: str,
    model_type: str,
    params: dict[str, int | float],
    priority: int,
    requested_by: str,
    max_attempts: int,
    now: int,
    max_queued: int | None = None,
    reason: str | None = None,
) -> None:
    """Queue a new job; IntegrityError if the slot has an active job or the id exists.

    `reason` is one sentence saying why the job exists (stored as given; None: not said).

    `QueueFullError` if `max_queued` jobs are queued already (counted in the same transaction,
    which SQLite serialises; on PostgreSQL two racing requests may pass the bound by one).
    """
    with write_session(url) as session:
        if max_queued is not None:
            queued = int(
                session.scalar(select(func.count()).where(TrainingJob.status == QUEUED)) or 0
            )
            if queued >= max_queued:
                raise QueueFullError(queued=queued, limit=max_queued)
        session.add(
            TrainingJob(
                id=job_id,
                pair=pair,
                model_type=model_type,
                params=params,
                priority=priority,
                status=QUEUED,
                requested_by=requested_by,
                reason=reason,
                attempts=0,
                max_attempts=max_attempts,
                queued_at=now,
                available_at=now,
            )
        )


def cancel_queued(url: str, *, job_id: str, reason: str, now: int) -> bool:
    """Cancel a job that has not started; False if it is not queued (any more)."""
    with write_session(url) as session:
        result = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == QUEUED)
            .values(
                status=CANCELLED, cancel_reason=reason, cancel_requested_at=now, finished_at=now
            )
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1


def emergency_stop(url: str, *, reason: str, now: int) -> tuple[list[str], list[str]]:
    """Pause dispatch, cancel every queued job, ask for the training one to be killed.

    Returns (the ids of the jobs training, the ids of the jobs cancelled).
    """
    with write_session(url) as session:
        _set_paused(session, paused=True, reason=reason, now=now)
        queued = list(session.scalars(select(TrainingJob.id).where(TrainingJob.status == QUEUED)))
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id.in_(queued), TrainingJob.status == QUEUED)
            .values(
                status=CANCELLED, cancel_reason=reason, cancel_requested_at=now, finished_at=now
            )
            .execution_options(synchronize_session=False)
        )
        training = list(
            session.scalars(select(TrainingJob.id).where(TrainingJob.status == TRAINING))
        )
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id.in_(training), TrainingJob.status == TRAINING)
            .values(cancel_requested_at=now, cancel_reason=reason)
            .execution_options(synchronize_session=False)
        )
    return training, queued


def set_paused(url: str, *, paused: bool, reason: str | None, now: int) -> None:
    """Pause or resume dispatch."""
    with write_session(url) as session:
        _set_paused(session, paused=paused, reason=reason, now=now)


def _set_paused(session: Session, *, paused: bool, reason: str | None, now: int) -> None:
    result = session.execute(
        update(QueueControl)
        .where(QueueControl.name == DISPATCH_CONTROL)
        .values(paused=paused, reason=reason, changed_at=now)
        .execution_options(synchronize_session=False)
    )
    if rowcount(result) == 0:
        session.add(
            QueueControl(name=DISPATCH_CONTROL, paused=paused, reason=reason, changed_at=now)
        )


def clear_cooldowns(
    url: str, *, pair: str | None, model_type: str | None, now: int
) -> list[tuple[str, str]]:
    """Delete the cooldowns of a pair (and model type), or all; return the (pair, type)s that
    were still running."""
    conditions = []
    if pair is not None:
        conditions.append(TrainingCooldown.pair == pair)
    if model_type is not None:
        conditions.append(TrainingCooldown.model_type == model_type)
    with write_session(url) as session:
        active = list(
            session.scalars(
                select(TrainingCooldown).where(TrainingCooldown.ends_at > now, *conditions)
            )
        )
        session.execute(delete(TrainingCooldown).where(*conditions))
        return [(row.pair, row.model_type) for row in active]


def claim(url: str, *, job_id: str, worker_id: str, now: int) -> int | None:
    """Move a queued job to `training` for this worker; return its attempt number.

    The UPDATE also requires that this worker holds the dispatch lease and that dispatch is
    not paused, and the unique index on `training` refuses a second training job: so a claim
    can only succeed for the one legitimate dispatcher, with nothing else training.
    """
    holds_lease = exists().where(
        SchedulerLease.name == DISPATCH_LEASE,
        SchedulerLease.holder == worker_id,
        # The database's clock, as the lease was written with it: hosts' clocks may differ.
        SchedulerLease.expires_at > db_now_ms(),
    )
    paused = exists().where(QueueControl.name == DISPATCH_CONTROL, QueueControl.paused.is_(True))
    with write_session(url) as session:
        # A cancel is final: a queued job that carries a cancel request ends cancelled here
        # instead of starting, and the claim below leaves the request in place.
        session.execute(
            update(TrainingJob)
            .where(
                TrainingJob.id == job_id,
                TrainingJob.status == QUEUED,
                TrainingJob.cancel_requested_at.is_not(None),
            )
            .values(status=CANCELLED, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        result = session.execute(
            update(TrainingJob)
            .where(
                TrainingJob.id == job_id,
                TrainingJob.status == QUEUED,
                TrainingJob.available_at <= now,
                TrainingJob.cancel_requested_at.is_(None),
                holds_lease,
                ~paused,
            )
            .values(
                status=TRAINING,
                attempts=TrainingJob.attempts + 1,
                started_at=now,
                finished_at=None,
                worker_id=worker_id,
                run_id=None,
                pid=None,
                pid_started_at=None,
                log_path=None,
            )
            .execution_options(synchronize_session=False)
        )
        if rowcount(result) != 1:
            return None
        number = session.scalar(select(TrainingJob.attempts).where(TrainingJob.id == job_id))
        assert number is not None
        session.add(
            TrainingAttempt(
                job_id=job_id, number=number, worker_id=worker_id, started_at=now, outcome="running"
            )
        )
        return number


def _owned(job_id: str, worker_id: str) -> tuple[ColumnElement[bool], ...]:
    return (
        TrainingJob.id == job_id,
        TrainingJob.status == TRAINING,
        TrainingJob.worker_id == worker_id,
    )


def record_launch(
    url: str,
    *,
    job_id: str,
    worker_id: str,
    attempt: int,
    run_id: str | None = None,
    log_path: str | None = None,
    pid: int | None = None,
    pid_started_at: float | None = None,
) -> bool:
    """Record the MLflow run, log file and child process of the running attempt."""
    job_values: dict[str, object] = {}
    attempt_values: dict[str, object] = {}
    if run_id is not None:
        job_values["run_id"] = attempt_values["run_id"] = run_id
    if log_path is not None:
        job_values["log_path"] = attempt_values["log_path"] = log_path
    if pid is not None:
        job_values.update(pid=pid, pid_started_at=pid_started_at)
    with write_session(url) as session:
        result = session.execute(
            update(TrainingJob)
            .where(*_owned(job_id, worker_id))
            .values(**job_values)
            .execution_options(synchronize_session=False)
        )
        if rowcount(result) != 1:
            return False
        if attempt_values:
            session.execute(
                update(TrainingAttempt)
                .where(TrainingAttempt.job_id == job_id, TrainingAttempt.number == attempt)
                .values(**attempt_values)
                .execution_options(synchronize_session=False)
            )
        return True


def request_cancel(url: str, *, job_id: str, reason: str, now: int) -> bool:
    """Ask the scheduler running this job to kill it; False if it is not training."""
    with write_session(url) as session:
        result = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == TRAINING)
            .values(cancel_requested_at=now, cancel_reason=reason)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1


def finish_attempt(
    url: str,
    *,
    job_id: str,
    worker_id: str,
    attempt: int,
    ending: Ending,
    now: int,
    requeue_at: int | None = None,
    report: RunReport | None = None,
    cooldown_ms: int | None = None,
    counted: bool = True,
) -> bool:
    """End the running attempt; move the job to its next state in the same transaction.

    A cancel is final: a job whose cancel was requested is never requeued, it ends
    `cancelled` unless its attempt succeeded.

    Args:
        url: Service database URL.
        job_id: The job.
        worker_id: The scheduler that ran the attempt (the change is refused otherwise).
        attempt: The attempt number.
        ending: Outcome of the attempt (succeeded, failed, cancelled, interrupted).
        now: Epoch ms.
        requeue_at: Put the job back in the queue, startable from this time (a retry).
        report: The training's report: every field when it succeeded; of a failed attempt
            only its `data_end` is kept (the data it was trained on, whatever the outcome).
        cooldown_ms: Start the pair's cooldown of this length (a training that finished).
        counted: False for an infrastructure failure (MLflow or the database unreachable):
            the attempt is forgotten (its number is used again), its error kept on the job.
    """
    with write_session(url) as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            return False
        # A training that succeeded before the kill came stays succeeded (its report is real).
        cancelled = job.cancel_requested_at is not None and ending.outcome != SUCCEEDED
        if cancelled and requeue_at is not None:
            requeue_at, cooldown_ms = None, None
        values = _next_values(ending, now=now, requeue_at=requeue_at, report=report)
        if cancelled and requeue_at is None:
            values.update(status=CANCELLED, error=job.cancel_reason or "cancelled")
        if not counted and requeue_at is not None:
            values["attempts"] = TrainingJob.attempts - 1
        result = session.execute(
            update(TrainingJob)
            .where(*_owned(job_id, worker_id))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if rowcount(result) != 1:
            return False
        this_attempt = (TrainingAttempt.job_id == job_id, TrainingAttempt.number == attempt)
        if "attempts" in values:
            session.execute(delete(TrainingAttempt).where(*this_attempt))
        else:
            session.execute(
                update(TrainingAttempt)
                .where(*this_attempt)
                .values(
                    outcome=ending.outcome,
                    finished_at=now,
                    exit_code=ending.exit_code,
                    error=ending.error,
                )
                .execution_options(synchronize_session=False)
            )
        if cooldown_ms is not None and cooldown_ms > 0:
            start_cooldown(
                session,
                pair=job.pair,
                model_type=job.model_type,
                job_id=job_id,
                now=now,
                length_ms=cooldown_ms,
            )
        return True


def _next_values(
    ending: Ending, *, now: int, requeue_at: int | None, report: RunReport | None
) -> dict[str, object]:
    """The job's columns after an attempt ended this way."""
    values: dict[str, object] = {"pid": None, "pid_started_at": None}
    if requeue_at is not None:
        values.update(status=QUEUED, available_at=requeue_at, worker_id=None)
    else:
        values.update(status=_job_status(ending.outcome), finished_at=now)
    if ending.error is not None:
        values["error"] = ending.error
    if report is not None and report.data_end is not None:
        values["data_end"] = report.data_end
    if ending.outcome == SUCCEEDED:
        values["error"] = None
        rep = report or RunReport()
        values.update(
            registered_model=rep.registered_model,
            registered_version=rep.registered_version,
            promotion=rep.promotion,
            promotion_reason=rep.promotion_reason,
            beats_baseline=rep.beats_baseline,
        )
    return values


def delete_ended_jobs(url: str, *, finished_before: int) -> list[str]:
    """Delete ended jobs (and their attempts) that finished before this time; return their ids."""
    with write_session(url) as session:
        ids = list(
            session.scalars(
                select(TrainingJob.id).where(
                    TrainingJob.status.in_(TERMINAL_STATUSES),
                    TrainingJob.finished_at < finished_before,
                )
            )
        )
        if ids:
            session.execute(delete(TrainingAttempt).where(TrainingAttempt.job_id.in_(ids)))
            session.execute(
                delete(TrainingJob)
                .where(TrainingJob.id.in_(ids), TrainingJob.status.in_(TERMINAL_STATUSES))
                .execution_options(synchronize_session=False)
            )
        return ids


def _job_status(outcome: str) -> str:
    return {SUCCEEDED: SUCCEEDED, FAILED: FAILED, CANCELLED: CANCELLED}.get(outcome, INTERRUPTED)


def start_cooldown(
    session: Session, *, pair: str, model_type: str, job_id: str, now: int, length_ms: int
) -> None:
    """Replace the cooldown of a pair and model type (inside the caller's transaction)."""
    session.execute(
        delete(TrainingCooldown).where(
            TrainingCooldown.pair == pair, TrainingCooldown.model_type == model_type
        )
    )
    session.add(
        TrainingCooldown(
            pair=pair, model_type=model_type, job_id=job_id, started_at=now, ends_at=now + length_ms
        )
    )
