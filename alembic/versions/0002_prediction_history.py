"""Prediction history: every computed prediction and, once known, its realised outcome

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `prediction_history` and its indexes."""
    op.create_table(
        "prediction_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pair", sa.String(16), nullable=False),
        sa.Column("model_type", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("candle_time", sa.BigInteger(), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("signal", sa.String(8), nullable=False),
        sa.Column("unproven", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_history")),
    )
    op.create_index(
        "ix_prediction_history_pair_created_at", "prediction_history", ["pair", "created_at"]
    )
    op.create_index(
        "ix_prediction_history_pair_model_version",
        "prediction_history",
        ["pair", "model_type", "model_version"],
    )
    op.create_index(
        "ix_prediction_history_outcome_pending", "prediction_history", ["outcome", "pair"]
    )


def downgrade() -> None:
    """Drop `prediction_history`."""
    op.drop_table("prediction_history")
