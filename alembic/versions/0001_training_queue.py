"""Training queue: jobs, attempts, cooldowns, dispatch control, scheduler lease, APScheduler jobs

Revision ID: 0001
Revises:
Create Date: 2024-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = sa.text("status IN ('queued', 'training')")
_TRAINING = sa.text("status = 'training'")


def upgrade() -> None:
    """Create the queue's tables and seed its control row and lease row."""
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("pair", sa.String(16), nullable=False),
        sa.Column("model_type", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("queued_at", sa.BigInteger(), nullable=False),
        sa.Column("available_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_started_at", sa.Float(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("cancel_requested_at", sa.BigInteger(), nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("registered_model", sa.String(255), nullable=True),
        sa.Column("registered_version", sa.String(32), nullable=True),
        sa.Column("promotion", sa.String(32), nullable=True),
        sa.Column("promotion_reason", sa.Text(), nullable=True),
        sa.Column("beats_baseline", sa.Boolean(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'training', 'succeeded', 'failed', 'cancelled', 'interrupted')",
            name=op.f("ck_training_jobs_status"),
        ),
        sa.CheckConstraint("priority BETWEEN 1 AND 10", name=op.f("ck_training_jobs_priority")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
    )
    op.create_index(
        "uq_training_jobs_active_pair_model",
        "training_jobs",
        ["pair", "model_type"],
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    op.create_index(
        "uq_training_jobs_one_training",
        "training_jobs",
        ["status"],
        unique=True,
        sqlite_where=_TRAINING,
        postgresql_where=_TRAINING,
    )
    op.create_index(
        "ix_training_jobs_dispatch", "training_jobs", ["status", "priority", "queued_at"]
    )
    op.create_index("ix_training_jobs_finished_at", "training_jobs", ["finished_at"])

    op.create_table(
        "training_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["training_jobs.id"],
            name=op.f("fk_training_attempts_job_id_training_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_attempts")),
        sa.UniqueConstraint("job_id", "number", name=op.f("uq_training_attempts_job_id_number")),
    )

    op.create_table(
        "training_cooldowns",
        sa.Column("pair", sa.String(16), nullable=False),
        sa.Column("model_type", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("ends_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pair", "model_type", name=op.f("pk_training_cooldowns")),
    )

    control = op.create_table(
        "queue_control",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_queue_control")),
    )
    op.bulk_insert(
        control, [{"name": "dispatch", "paused": False, "reason": None, "changed_at": 0}]
    )

    lease = op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("acquired_at", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_leases")),
    )
    op.bulk_insert(
        lease,
        [{"name": "training-dispatcher", "holder": None, "acquired_at": None, "expires_at": 0}],
    )

    # APScheduler's job store table, exactly as its SQLAlchemyJobStore defines it, so the
    # service database's schema is all alembic's (APScheduler only creates it when missing).
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), nullable=False),
        sa.Column("next_run_time", sa.Float(25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apscheduler_jobs")),
    )
    op.create_index("ix_apscheduler_jobs_next_run_time", "apscheduler_jobs", ["next_run_time"])


def downgrade() -> None:
    """Drop the queue's tables."""
    op.drop_index("ix_apscheduler_jobs_next_run_time", table_name="apscheduler_jobs")
    op.drop_table("apscheduler_jobs")
    op.drop_table("scheduler_leases")
    op.drop_table("queue_control")
    op.drop_table("training_cooldowns")
    op.drop_table("training_attempts")
    op.drop_index("ix_training_jobs_finished_at", table_name="training_jobs")
    op.drop_index("ix_training_jobs_dispatch", table_name="training_jobs")
    op.drop_index("uq_training_jobs_one_training", table_name="training_jobs")
    op.drop_index("uq_training_jobs_active_pair_model", table_name="training_jobs")
    op.drop_table("training_jobs")
