"""Retraining policy: why each job exists, where its data ends, the policy's latest decisions

`training_jobs.reason` is one sentence saying why the job was queued; `training_jobs.data_end`
(epoch ms) is the end of the data its training used, read from its run's `data_range` tag when
an attempt finishes. `policy_decisions` holds the retraining policy's latest decision per pair
and model type, so every replica can show it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the two job columns (nullable: old rows have neither) and `policy_decisions`."""
    op.add_column("training_jobs", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("training_jobs", sa.Column("data_end", sa.BigInteger(), nullable=True))
    op.create_table(
        "policy_decisions",
        sa.Column("pair", sa.String(16), nullable=False),
        sa.Column("model_type", sa.String(16), nullable=False),
        sa.Column("decided_at", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.CheckConstraint(
            "action IN ('enqueued', 'skipped', 'off')", name=op.f("ck_policy_decisions_action")
        ),
        sa.PrimaryKeyConstraint("pair", "model_type", name=op.f("pk_policy_decisions")),
    )


def downgrade() -> None:
    """Drop `policy_decisions` and the two job columns."""
    op.drop_table("policy_decisions")
    op.drop_column("training_jobs", "data_end")
    op.drop_column("training_jobs", "reason")
