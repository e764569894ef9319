"""Tables of the training queue. The job table is the queue's single source of truth.

Two rules live in the database itself, as partial unique indexes (SQLite and PostgreSQL both
have them), so no check-then-insert race can break them:

- one queued-or-training job per pair and model type (`uq_training_jobs_active_pair_model`);
- at most one job `training` at any moment (`uq_training_jobs_one_training`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipelines.db import Base

QUEUED = "queued"
TRAINING = "training"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
JOB_STATUSES = (QUEUED, TRAINING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE_STATUSES = (QUEUED, TRAINING)
TERMINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
# An attempt is `running` until it ends one of these ways.
ATTEMPT_OUTCOMES = ("running", SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)

DISPATCH_CONTROL = "dispatch"
DISPATCH_LEASE = "training-dispatcher"

_ACTIVE_WHERE = text("status IN ('queued', 'training')")
_TRAINING_WHERE = text("status = 'training'")


class TrainingJob(Base):
    """One requested training of a pair and model type, through all its attempts."""

    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pair: Mapped[str] = mapped_column(String(16))
    model_type: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    # Who asked: api, cli, bootstrap, schedule, stale, drift (pipelines.queue.api.REQUESTERS).
    requested_by: Mapped[str] = mapped_column(String(16))
    # One sentence: why the job exists (the retraining policy's reason, say); None if not given.
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    # Times are milliseconds since the epoch (UTC), as the REST API shows them.
    queued_at: Mapped[int] = mapped_column(BigInteger)
    # Earliest start: the queued time, or the end of a retry's backoff.
    available_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    run_id: Mapped[str | None] = mapped_column(String(64))
    # The scheduler that started the current attempt, and its child process (pid and start
    # time, so a successor never kills a recycled pid).
    worker_id: Mapped[str | None] = mapped_column(String(128))
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_started_at: Mapped[float | None] = mapped_column(Float)
    log_path: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[int | None] = mapped_column(BigInteger)
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # What the training reported through its run's tags (see notes/queue-training-contract).
    registered_model: Mapped[str | None] = mapped_column(String(255))
    registered_version: Mapped[str | None] = mapped_column(String(32))
    promotion: Mapped[str | None] = mapped_column(String(32))
    promotion_reason: Mapped[str | None] = mapped_column(Text)
    beats_baseline: Mapped[bool | None] = mapped_column(Boolean)
    # End of the data the training used (its run's `data_range`), epoch ms; filled when an
    # attempt finishes. The retraining policy counts new candles from here.
    data_end: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'training', 'succeeded', 'failed', 'cancelled', 'interrupted')",
            name="status",
        ),
        CheckConstraint("priority BETWEEN 1 AND 10", name="priority"),
        Index(
            "uq_training_jobs_active_pair_model",
            "pair",
            "model_type",
            unique=True,
            sqlite_where=_ACTIVE_WHERE,
            postgresql_where=_ACTIVE_WHERE,
        ),
        Index(
            "uq_training_jobs_one_training",
            "status",
            unique=True,
            sqlite_where=_TRAINING_WHERE,
            postgresql_where=_TRAINING_WHERE,
        ),
        Index("ix_training_jobs_dispatch", "status", "priority", "queued_at"),
        Index("ix_training_jobs_finished_at", "finished_at"),
    )


class TrainingAttempt(Base):
    """One start of a job's training child; the history keeps every one."""

    __tablename__ = "training_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("training_jobs.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("job_id", "number"),)


class TrainingCooldown(Base):
    """The cooldown of a pair and model type: the only place it lives.

    Written in the same transaction that ends a training, deleted by clear-cooldowns; its length
    is fixed when it starts (`ML_TRAINING_COOLDOWN` at that moment).
    """

    __tablename__ = "training_cooldowns"

    pair: Mapped[str] = mapped_column(String(16), primary_key=True)
    model_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[int] = mapped_column(BigInteger)
    ends_at: Mapped[int] = mapped_column(BigInteger)


class QueueControl(Base):
    """Switches of the dispatcher; one row, `dispatch`, paused by emergency stop."""

    __tablename__ = "queue_control"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    changed_at: Mapped[int] = mapped_column(BigInteger)


class SchedulerLease(Base):
    """Who may dispatch: a holder and an expiry, taken and renewed by conditional UPDATEs."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    acquired_at: Mapped[int | None] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)


POLICY_ENQUEUED = "enqueued"
POLICY_SKIPPED = "skipped"
POLICY_OFF = "off"
POLICY_ACTIONS = (POLICY_ENQUEUED, POLICY_SKIPPED, POLICY_OFF)


class PolicyDecision(Base):
    """The retraining policy's latest decision for a pair and model type, and why.

    Written by the lease holder's policy chore (pipelines.queue.policy), read by every
    replica's `GET /api/training/queue`.
    """

    __tablename__ = "policy_decisions"

    pair: Mapped[str] = mapped_column(String(16), primary_key=True)
    model_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    decided_at: Mapped[int] = mapped_column(BigInteger)
    # enqueued | skipped | off
    action: Mapped[str] = mapped_column(String(16))
    # The requester of the job it enqueued (stale, schedule), else None.
    requested_by: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (CheckConstraint("action IN ('enqueued', 'skipped', 'off')", name="action"),)
